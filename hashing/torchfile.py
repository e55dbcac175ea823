"""Reading a file written by torch.save that a user supplies: tensors and plain data only.

torch.load with weights_only=True admits tensors, numbers, strings and containers; everything
it raises becomes one ValueError that names the file. torch's own text is never shown: for a
refused object it advises weights_only=False, which would let the file run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


class TorchFileError(ValueError):
    """A torch.save file that cannot be read, or holds more than tensors and plain data."""


def load_tensors(path: Path, what: str):
    """The contents of `path`; `what` says what the user should pass instead (e.g. "a checkpoint ...")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the callable a file asks for ("GLOBAL posix.system"); garbage fails otherwise.
        if "global" in str(err).lower():
            raise TorchFileError(
                f"{path}: refused: it holds Python objects besides tensors, numbers, strings and "
                f"containers, and iwan never loads those from a file (they could run code); pass {what}"
            ) from None
        raise TorchFileError(_unreadable(path, err, what)) from None
    except Exception as err:  # noqa: BLE001 - torch fails on garbage in many ways (KeyError, RuntimeError, EOFError)
        raise TorchFileError(_unreadable(path, err, what)) from None


def _unreadable(path: Path, err: Exception, what: str) -> str:
    return (
        f"{path} is not a PyTorch weights file that can be read ({type(err).__name__}: truncated, "
        f"damaged or another format); pass {what}"
    )
