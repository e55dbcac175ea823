"""iwan's ImageNet networks as hash-network backbones, registered with `hashing.net`.

The word predictors' networks (`iwan.vision.predictors.ARCHITECTURES`: resnet50,
efficientnet-lite0) cut at their pooled features, exactly what `iwan.vision.features` caches, and
AlexNet cut at fc7 (Lin et al.). Importing this module registers them: every iwan entry point that
builds or loads a hash network imports it first.

hashing's registry hands a builder nothing but HashNet's `pretrained`. An entry point with
settings passes the ImageNet weights as `pretrained_weights(name, settings)` (a file where they
are a download); a bare 'imagenet' for such a backbone reads the settings from the environment,
HashNet being the entry point then.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from hashing.net import IMAGENET_MEAN, IMAGENET_STD, ImageInput, register_backbone
from hashing.torchfile import load_state_dict
from iwan import config
from iwan.config import Settings
from iwan.vision.predictors import ARCHITECTURES, pretrained_resnet50_weights

PRETRAINABLE = (*ARCHITECTURES, "alexnet")
"""The backbones registered here, all with ImageNet weights ('imagenet' as HashNet's `pretrained`)."""
ALEXNET_SIZE = 224


class _PooledFeatures(nn.Module):
    """An iwan.vision.predictors network cut at its pooled features: exactly what `iwan.vision.features` caches."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)[1]


def pretrained_weights(name: str, settings: Settings) -> str | Path | None:
    """HashNet's `pretrained` for backbone `name`'s ImageNet weights under `settings`: the file of
    ResNet-50's (downloaded first when missing), 'imagenet' for the others (packaged with
    efficientnet-lite0, torchvision's own cache for alexnet), None for a backbone without any."""
    if name == "resnet50":
        return pretrained_resnet50_weights(settings)
    return "imagenet" if name in PRETRAINABLE else None


def _predictor_backbone(name: str, pretrained: str | Path | None) -> tuple[nn.Module, int]:
    arch = ARCHITECTURES[name]
    imagenet = pretrained == "imagenet"
    # The registry's entry from the hashing library: HashNet(pretrained="imagenet") gives no settings.
    settings = config.settings() if imagenet and name == "resnet50" else None
    head = arch.build(None if imagenet else pretrained, imagenet, arch.image_size, settings)
    # The ImageNet classifier stays in the module (unused) so that its weights files load as they are.
    head.fc.requires_grad_(False)
    preprocess = ImageInput(arch.image_size, arch.mean, arch.std, arch.interpolation)
    return nn.Sequential(preprocess, _PooledFeatures(head)), arch.feature_dim


def _alexnet(pretrained: str | Path | None) -> tuple[nn.Module, int]:
    from iwan.tv import models

    if pretrained == "imagenet":
        try:
            net = models.alexnet(weights=models.AlexNet_Weights.DEFAULT)
        except Exception as err:  # noqa: BLE001 - network, disk or checksum: the same manual fix
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            raise RuntimeError(
                f"could not download the ImageNet weights of alexnet ({reason}): fetch "
                f"{models.AlexNet_Weights.DEFAULT.url} on a machine with internet and pass its path instead"
            ) from None
    else:
        net = models.alexnet(weights=None)
        if pretrained is not None:
            load_state_dict(net, Path(pretrained).expanduser(), "alexnet")
    # Lin et al. put the hash layer on AlexNet's fc7 (after its ReLU), in place of fc8.
    width = net.classifier[-1].in_features
    net.classifier = net.classifier[:-1]
    return nn.Sequential(ImageInput(ALEXNET_SIZE, IMAGENET_MEAN, IMAGENET_STD), net), width


for _name in ARCHITECTURES:
    register_backbone(_name, partial(_predictor_backbone, _name))
register_backbone("alexnet", _alexnet)
