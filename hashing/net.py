"""The semantic hash network: backbone -> decoder MLP -> sigmoid hash layer -> unit embedding.

Barz & Denzler (WACV 2019) map images onto hierarchy-based class embeddings; Lin et al. (CVPR-W
2015) put a layer of sigmoid units between the features and the output, whose activations
binarised at 0.5 are the image's hash code. Here the hash layer is the bottleneck in front of the
embedding, so the code is trained to carry everything the embedding knows. An optional
classification head on the embedding adds Barz's cross-entropy term, and its softmax doubles as
word predictions for IWAN.

Image backbones take uint8 (N, H, W, 3) RGB batches and normalise (and resize) them themselves, so
a checkpoint is all a caller needs; `precomputed` takes (N, feature_dim) cached backbone features.
Backbones are looked up by name among those registered (`register_backbone`): `precomputed` and
`small-cnn` are built in; an application registers others (its ImageNet networks, say) before it
builds or loads a network on them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashing import HASH_BITS
from hashing.torchfile import load_state_dict, load_tensors

PRECOMPUTED = "precomputed"
"""The built-in backbone that takes cached (N, feature_dim) features: the backbone has already run."""
CHECKPOINT_FORMAT = "iwan-hash-network/1"
DEFAULT_HIDDEN = (1024,)

IMAGENET_MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255 * s for s in (0.229, 0.224, 0.225))
"""ImageNet's pixel statistics in uint8 units, x = (pixel - mean) / std: torchvision's networks' inputs."""
_CIFAR10_MEAN = (125.3, 123.0, 113.9)
_CIFAR10_STD = (63.0, 62.1, 66.7)
_SMALL_CNN_SIZE = 32

BackboneBuilder = Callable[[str | Path | None], tuple[nn.Module, int]]
"""builder(pretrained) -> (module, its output width). The module takes uint8 (N, H, W, 3) RGB
batches and resizes and normalises them itself (`ImageInput`); `pretrained` is HashNet's: None
(random init), 'imagenet', or the path of a weights file."""

_BUILDERS: dict[str, BackboneBuilder] = {}


class BackboneNotRegistered(ValueError):
    """A backbone name that no `register_backbone` call has made buildable (in this process)."""


def register_backbone(name: str, builder: BackboneBuilder) -> BackboneBuilder:
    """Make backbone `name` buildable by HashNet and loadable from checkpoints (torchvision's
    register_model, for hash networks). Registering a name twice is an error, unless it is the
    same builder again."""
    if name == PRECOMPUTED or _BUILDERS.get(name, builder) is not builder:
        raise ValueError(f"backbone {name!r} is registered already: register the builder under another name")
    _BUILDERS[name] = builder
    return builder


def registered_backbones() -> tuple[str, ...]:
    """The backbone names HashConfig accepts now."""
    return (PRECOMPUTED, *_BUILDERS)


def _check_registered(name: str) -> None:
    if name not in registered_backbones():
        raise BackboneNotRegistered(
            f"backbone {name!r} is not registered (registered: {', '.join(registered_backbones())}): import the "
            f"module that registers it first (iwan's ImageNet backbones and alexnet: iwan.vision.backbones), "
            f"or call hashing.net.register_backbone({name!r}, builder)"
        )


@dataclass(frozen=True)
class HashConfig:
    """Everything that fixes the network's shape; checkpoints record it and loading checks it."""

    backbone: str
    n_classes: int
    embedding_dim: int
    feature_dim: int = 0
    """The backbone's output width; 0 means the named backbone's own (required for precomputed)."""
    features: str = ""
    """For `precomputed`: which extractor made the features (e.g. efficientnet-lite0)."""
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    bits: int = HASH_BITS
    classification: bool = True
    input_dropout: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_registered(self.backbone)
        if self.backbone == PRECOMPUTED and self.feature_dim <= 0:
            raise ValueError("backbone 'precomputed' needs feature_dim: the width of the cached features")
        if min(self.n_classes, self.embedding_dim, self.bits, *self.hidden, 1) < 1:
            raise ValueError(
                f"n_classes={self.n_classes}, embedding_dim={self.embedding_dim}, bits={self.bits} and "
                f"hidden={self.hidden} must all be positive"
            )
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    def describe(self) -> str:
        head = "with" if self.classification else "without"
        source = f" of {self.features}" if self.features else ""
        width = f" ({self.feature_dim}-d)" if self.feature_dim else ""
        return (
            f"{self.backbone}{source}{width} -> {list(self.hidden)} -> {self.bits} bits "
            f"-> {self.embedding_dim}-d embedding, {self.n_classes} classes, {head} classification head"
        )


class HashOutput(NamedTuple):
    embedding: torch.Tensor
    """(N, embedding_dim), unit L2 norm."""
    hash: torch.Tensor
    """(N, bits) sigmoid activations in (0, 1); binarise at 0.5 for the code."""
    logits: torch.Tensor | None
    """(N, n_classes), or None without a classification head."""


class HashNet(nn.Module):
    def __init__(self, config: HashConfig, pretrained: str | Path | None = None):
        """`pretrained`: None (random init), 'imagenet', or the path of a state dict of the whole
        torchvision / efficientnet-lite classifier (or of SmallCNN). Checkpoints need none of it."""
        super().__init__()
        self.backbone, feature_dim = build_backbone(config.backbone, config.feature_dim, pretrained)
        if config.feature_dim not in (0, feature_dim):
            raise ValueError(
                f"feature_dim={config.feature_dim} does not match backbone {config.backbone}, whose "
                f"features are {feature_dim}-d; leave feature_dim 0 for non-precomputed backbones"
            )
        self.config = HashConfig(**{**asdict(config), "feature_dim": feature_dim})
        self.frozen_backbone = False
        widths = (feature_dim, *config.hidden)
        layers: list[nn.Module] = [nn.Dropout(config.input_dropout)]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
            layers.append(nn.Dropout(config.dropout))
        self.decoder = nn.Sequential(*layers)
        self.hash_layer = nn.Linear(widths[-1], config.bits)
        self.embedding_layer = nn.Linear(config.bits, config.embedding_dim)
        self.classifier = nn.Linear(config.embedding_dim, config.n_classes) if config.classification else None

    def freeze_backbone(self) -> None:
        """Keep the backbone's weights and batch-norm statistics as they are while the head trains."""
        self.frozen_backbone = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> HashNet:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.frozen_backbone:
            with torch.no_grad():
                return self.backbone(inputs)
        return self.backbone(inputs)

    def forward(self, inputs: torch.Tensor) -> HashOutput:
        return self.head(self.features(inputs))

    def head(self, features: torch.Tensor) -> HashOutput:
        """Everything after the backbone: decoder, hash layer, embedding (and classifier)."""
        return self.from_hash(torch.sigmoid(self.hash_layer(self.decoder(features))))

    def forward_mirrored(self, inputs: torch.Tensor) -> HashOutput:
        """Test-time augmentation for image backbones: the hash activations of each image and of
        its mirror image, averaged, give the code and the embedding."""
        if self.config.backbone == PRECOMPUTED:
            raise ValueError("mirror averaging needs images; a precomputed backbone gets features")
        both = self.head(self.features(torch.cat([inputs, inputs.flip(2)])))
        return self.from_hash(both.hash.view(2, len(inputs), -1).mean(0))

    def prepare(self, train_inputs: torch.Tensor) -> None:
        """Data-dependent initialisation before training (the small CNN's whitening filters)."""
        if self.config.backbone == "small-cnn":
            # _small_cnn builds Sequential(ImageInput, SmallCNN); the cast only names the two parts
            normalise, cnn = cast(tuple[ImageInput, SmallCNN], self.backbone)
            cnn.fit_whitening(normalise(train_inputs))

    def from_hash(self, hashed: torch.Tensor) -> HashOutput:
        """The embedding (and logits) that hash activations, or binary codes as 0/1 floats, map to."""
        embedding = F.normalize(self.embedding_layer(hashed), dim=1)
        logits = self.classifier(embedding) if self.classifier is not None else None
        return HashOutput(embedding, hashed, logits)


# --- backbones ---------------------------------------------------------------------------------


class ImageInput(nn.Module):
    """uint8 (N, H, W, 3) RGB -> normalised float (N, 3, size, size): what image backbones put in
    front of their network. Resizes (antialiased when shrinking) as iwan's predictors do, so that a
    backbone sees what cached features were computed from."""

    mean: torch.Tensor  # buffers (register_buffer), typed for mypy
    std: torch.Tensor

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str = "bilinear"):
        super().__init__()
        self.size = size
        self.interpolation = interpolation
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"image backbones take uint8 (N, H, W, 3) RGB batches, got {images.dtype} of shape "
                f"{tuple(images.shape)}; pass ImageDataset.images (not cached features)"
            )
        x = images.permute(0, 3, 1, 2).float()
        side = x.shape[-1]
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode=self.interpolation, align_corners=False, antialias=side > self.size
            ).clamp_(0, 255)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


class FeatureInput(nn.Module):
    """Cached features in, float32 out: the backbone has already run."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.dim or not features.is_floating_point():
            raise ValueError(
                f"the precomputed backbone takes float (N, {self.dim}) features, got {features.dtype} "
                f"of shape {tuple(features.shape)}; pass the cached features this network was trained on"
            )
        return features.float()


def build_backbone(name: str, feature_dim: int, pretrained: str | Path | None) -> tuple[nn.Module, int]:
    """(module, output width) of the named backbone; `feature_dim` matters only for precomputed."""
    if name == PRECOMPUTED:
        if pretrained is not None:
            raise ValueError("backbone 'precomputed' has no weights: drop the pretrained weights")
        return FeatureInput(feature_dim), feature_dim
    _check_registered(name)
    return _BUILDERS[name](pretrained)


def _small_cnn(pretrained: str | Path | None) -> tuple[nn.Module, int]:
    if pretrained == "imagenet":
        raise ValueError("small-cnn has no ImageNet weights: train it from scratch or pass a state dict")
    net = SmallCNN()
    if pretrained is not None:
        load_state_dict(net, Path(pretrained).expanduser(), "small-cnn")
    return nn.Sequential(ImageInput(_SMALL_CNN_SIZE, _CIFAR10_MEAN, _CIFAR10_STD), net), net.width


class SmallCNN(nn.Module):
    """A from-scratch CNN for 32x32 images after Jordan's airbench94 (2024, "94% on CIFAR-10 in
    3.29 seconds on a single GPU"): a fixed 2x2 patch-whitening layer, then three groups of
    conv-pool-norm-GELU / conv-norm-GELU (64, 256, 256 channels), ~0.12 GMAC per image.

    The whitening layer's weights come from the training images (`fit_whitening`), so that the
    first trained layer sees decorrelated pixels; its batch norms learn only their biases."""

    width = 256
    widths = (64, 256, 256)
    whiten_size = 2
    whiten_eps = 5e-4

    def __init__(self):
        super().__init__()
        patch = 3 * self.whiten_size**2
        # +/- each whitening filter: the GELU after it would otherwise drop half of every direction.
        self.whiten = nn.Conv2d(3, 2 * patch, self.whiten_size, bias=True)
        self.whiten.weight.requires_grad_(False)
        widths = (2 * patch, *self.widths)
        self.groups = nn.Sequential(*(_ConvGroup(a, b) for a, b in zip(widths, widths[1:])))
        self.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def fit_whitening(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalised (N, 3, H, W) training images (a few thousand do)."""
        k = self.whiten_size
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        patches = patches.double()
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.whiten_eps)[:, None]).reshape(-1, 3, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.groups(F.gelu(self.whiten(x))), 3).flatten(1)


class _ConvGroup(nn.Module):
    def __init__(self, width_in: int, width_out: int):
        super().__init__()
        self.conv1, self.norm1 = _conv(width_in, width_out), _bias_only_norm(width_out)
        self.conv2, self.norm2 = _conv(width_out, width_out), _bias_only_norm(width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


def _conv(width_in: int, width_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(width_in, width_out, 3, padding="same", bias=False)
    # Identity-initialised where the widths allow: each group starts close to passing its input on.
    nn.init.dirac_(conv.weight.data[:width_in])
    return conv


def _bias_only_norm(width: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(width, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


register_backbone("small-cnn", _small_cnn)


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path
    net: HashNet
    class_embeddings: np.ndarray
    """(n_classes, embedding_dim) float32: the targets the network was trained towards."""
    class_names: list[str] | None
    training: dict | None
    """Optimizer, scheduler and history in `last.pt` (see hashing.train); None in `best.pt`."""


def save_checkpoint(
    path: str | Path,
    net: HashNet,
    class_embeddings: np.ndarray,
    class_names: list[str] | None = None,
    training: dict | None = None,
) -> Path:
    """Write atomically, so that an interrupted save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(net.config),
        "model": net.state_dict(),
        "class_embeddings": torch.as_tensor(np.asarray(class_embeddings, dtype=np.float32)),
        "class_names": list(class_names) if class_names is not None else None,
        "training": training,
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(
    path: str | Path, expect: HashConfig | None = None, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Rebuild the network a checkpoint holds (in eval mode, on `device`).

    With `expect`, a checkpoint saved for any other architecture is a ValueError naming both."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint; train one with `hash train`")
    wanted = "a checkpoint that `iwan hash train` wrote (best.pt)"
    payload = load_tensors(path, wanted)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a hash-network checkpoint ({CHECKPOINT_FORMAT}); pass {wanted}")
    try:
        config = HashConfig(**payload["config"])
        if expect is not None:
            _check_architecture(path, config, expect)
        net = HashNet(config)
        net.load_state_dict(payload["model"])
        checkpoint = Checkpoint(
            path=path,
            net=net,
            class_embeddings=payload["class_embeddings"].numpy(),
            class_names=payload["class_names"],
            training=payload["training"],
        )
    except BackboneNotRegistered as err:
        raise BackboneNotRegistered(f"{path} holds a hash network whose {err}") from None
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        # A checkpoint edited or written by another version: its parts do not fit together.
        raise ValueError(
            f"{path} is a damaged {CHECKPOINT_FORMAT} checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'missing part'}); pass {wanted}"
        ) from None
    net.to(device).eval()
    return checkpoint


def _check_architecture(path: Path, saved: HashConfig, expected: HashConfig) -> None:
    differences = [
        f"{f.name} {getattr(saved, f.name)!r} there, {getattr(expected, f.name)!r} here"
        for f in fields(HashConfig)
        # feature_dim 0 asks for the backbone's own width, whatever the checkpoint found it to be.
        if getattr(saved, f.name) != getattr(expected, f.name) and not (f.name == "feature_dim" and not expected.feature_dim)
    ]
    if differences:
        raise ValueError(
            f"{path} holds a hash network for another architecture: saved {saved.describe()}; "
            f"asked for {expected.describe()} ({'; '.join(differences)}). Load it with the architecture "
            "it was saved for, or train the new one in another directory"
        )
