"""Reading a file written by torch.save that a user supplies: tensors and plain data only.

torch.load with weights_only=True admits tensors, numbers, strings and containers; everything
it raises becomes one ValueError that names the file. torch's own text is never shown: for a
refused object it advises weights_only=False, which would let the file run code. `load_state_dict`
reads weights files that way into a network, and says when they do not fit it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn


class TorchFileError(ValueError):
    """A torch.save file that cannot be read, or holds more than tensors and plain data."""


class WeightsError(ValueError):
    """A weights file exists but does not hold weights for the asked network."""


def load_tensors(path: Path, what: str):
    """The contents of `path`; `what` says what the user should pass instead (e.g. "a checkpoint ...")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the callable a file asks for ("GLOBAL posix.system"); garbage fails otherwise.
        if "global" in str(err).lower():
            raise TorchFileError(
                f"{path}: refused: it holds Python objects besides tensors, numbers, strings and "
                f"containers, which are never loaded from a file (they could run code); pass {what}"
            ) from None
        raise TorchFileError(_unreadable(path, err, what)) from None
    except Exception as err:  # noqa: BLE001 - torch fails on garbage in many ways (KeyError, RuntimeError, EOFError)
        raise TorchFileError(_unreadable(path, err, what)) from None


def _unreadable(path: Path, err: Exception, what: str) -> str:
    return (
        f"{path} is not a PyTorch weights file that can be read ({type(err).__name__}: truncated, "
        f"damaged or another format); pass {what}"
    )


def load_state_dict(model: nn.Module, path: Path, what: str) -> None:
    """Load a state dict file (tensors only: torch's weights_only) into `model`; WeightsError unless it fits."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist: pass the path of a {what} state dict")
    try:
        state = load_tensors(path, f"a {what} state dict saved with torch.save")
    except TorchFileError as err:
        raise WeightsError(str(err)) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a {what} state dict")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        lines = str(err).splitlines()
        raise WeightsError(f"{path} does not fit {what}: {lines[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{path} is not a {what} state dict: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})"
        )
