"""How a hash network is trained on a data set: each backbone's recipe, and the class embeddings of
the data set's hierarchy.

The library side of `iwan hash train`: usable from Python without the CLI. The network's inputs
(pixels, or cached backbone features) are the application's to compute: fit and embed take arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PRECOMPUTED_PREFIX = "precomputed-"
FEATURE_EXTRACTORS = ("efficientnet-lite0",)
BACKBONE_CHOICES = (
    *(PRECOMPUTED_PREFIX + name for name in FEATURE_EXTRACTORS), "efficientnet-lite0", "small-cnn", "resnet50", "alexnet",
)
"""What `hash train --backbone` accepts: `precomputed-X` trains the head on X's cached features."""

# Each backbone's recipe: the defaults of the training options (TrainConfig fields, plus the
# decoder's `hidden`, `dropout`, `input_dropout`, and `mirror_test`); "pretrained" serves the ImageNet
# backbones trained on images. Measured on CIFAR-10 with two CPU cores (README, "Training"): the
# precomputed head plateaus near 84% validation accuracy. The small CNN's is airbench94's (Jordan
# 2024), its summed-loss learning rates restated for a mean loss, plus the auxiliary classifier
# that the hash layer's bottleneck makes necessary (3 epochs: 68% without it, 78% with it).
# Settings a recipe leaves out keep TrainConfig's defaults.
RECIPES: dict[str, dict] = {
    "precomputed": dict(
        epochs=30, batch_size=256, lr=1e-3, optimizer="adam", schedule="onecycle", weight_decay=1e-4,
        hidden=(1024,), dropout=0.5, input_dropout=0.2, feature_noise=0.0, precision="fp32", mirror_test=False,
    ),
    "small-cnn": dict(
        epochs=20, batch_size=1024, lr=1.5, optimizer="sgd", schedule="triangle", weight_decay=0.002 / 1.5,
        momentum=0.85, hidden=(512,), dropout=0.0, input_dropout=0.0, feature_noise=0.0, precision="auto",
        label_smoothing=0.2, auxiliary_weight=1.0, head_lr_scale=0.1, bias_lr_scale=64.0, lookahead=True,
        translate=2, mirror_test=True,
    ),
    "pretrained": dict(
        epochs=10, batch_size=64, lr=0.01, optimizer="sgd", schedule="cosine", weight_decay=1e-4,
        hidden=(1024,), dropout=0.5, input_dropout=0.0, feature_noise=0.0, precision="auto", mirror_test=True,
    ),
}


def feature_extractor(backbone: str) -> str | None:
    """The extractor whose cached features a backbone choice trains on; None for image backbones."""
    return backbone.removeprefix(PRECOMPUTED_PREFIX) if backbone.startswith(PRECOMPUTED_PREFIX) else None


def recipe(backbone: str) -> dict:
    """The recipe of a `BACKBONE_CHOICES` entry."""
    if backbone not in BACKBONE_CHOICES:
        raise ValueError(f"backbone {backbone!r} is unknown: choose from {', '.join(BACKBONE_CHOICES)}")
    if feature_extractor(backbone):
        return RECIPES["precomputed"]
    return RECIPES["small-cnn" if backbone == "small-cnn" else "pretrained"]


def dataset_class_embeddings(spec: str, class_names: list[str], hierarchy_path: str | Path) -> np.ndarray:
    """(n_classes, n_classes) float32 Barz-Denzler embeddings of data set `spec`'s classes, from the
    hierarchy at `hierarchy_path` (and the names file beside it, if any), checked against the data
    set's classes; `spec` names the data set in errors."""
    from hashing.embeddings import class_embeddings
    from hashing.hierarchy import load_hierarchy

    hierarchy_path = Path(hierarchy_path)
    if not hierarchy_path.is_file():
        raise FileNotFoundError(f"class hierarchy {hierarchy_path} does not exist: pass --hierarchy PATH (a parent-child file)")
    hierarchy = load_hierarchy(hierarchy_path)
    if hierarchy.n_classes != len(class_names):
        raise ValueError(
            f"{hierarchy_path} has {hierarchy.n_classes} classes (leaves), {spec} has {len(class_names)}: "
            f"pass the hierarchy of {spec} with --hierarchy"
        )
    named = {i: hierarchy.names[i] for i in range(len(class_names)) if i in hierarchy.names}
    wrong = [f"{i}: {name!r} there, {class_names[i]!r} in {spec}" for i, name in named.items() if name != class_names[i]]
    if wrong:
        raise ValueError(f"{hierarchy_path} numbers the classes otherwise than {spec} ({'; '.join(wrong[:3])}): pass its hierarchy")
    return class_embeddings(hierarchy).astype(np.float32)
