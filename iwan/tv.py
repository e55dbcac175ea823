"""The one way this project imports torchvision.

PyPI's torchvision wheels are CUDA builds: beside a CPU-only torch their compiled operators
(`torchvision::nms` and friends) fail to register and `import torchvision` raises. This project
needs only models, weights metadata, transforms and data sets, none of which call those
operators, so on that failure the abstract-kernel registration is skipped and the import retried.
"""

from __future__ import annotations

import importlib
import sys


def _import_torchvision():
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch.library

    real_register_fake = torch.library.register_fake

    def register_fake_or_skip(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn: fn
        return real_register_fake(op, *args, **kwargs)

    torch.library.register_fake = register_fake_or_skip
    try:
        return importlib.import_module("torchvision")
    finally:
        torch.library.register_fake = real_register_fake


torchvision = _import_torchvision()
models = torchvision.models
transforms = torchvision.transforms
datasets = torchvision.datasets
