"""A small, real environment for the README's Python examples (tests/test_readme.py).

What `bash scripts/main.sh` makes from CIFAR-10, made in seconds and through the same commands:

* the embedded PostgreSQL (a fresh database per example, IWAN_DATABASE_URL pointing at it) and a
  private IWAN_HOME and IWAN_DATA_DIR;
* norms (`iwan norms load`): the test Appendix A of tests/usf_files.py (LAB, CAT, DOG, ...),
  associations between ImageNet class words (so that predictions have words), and CAT and DOG
  linked to some of those words;
* CIFAR-10 as JPEG class folders in IWAN_DATA_DIR/cifar10-jpg (2 images per class and split,
  tests/cifar_files.py), registered and predicted by `iwan predict` for train, then test;
* the hash model `cifar10-hash`: a random small-CNN hash network with CIFAR-10's class embeddings
  as IWAN_HOME/models/cifar10-hash/best.pt, its codes stored by `iwan hash encode`;
* the collection `cifar10` over the train split (`iwan collection create`);
* `cat.jpg` and `query.jpg` in the working folder, which is a fresh one.

Every predictor iwan loads is the tiny one of tests/livedata.py (EfficientNet-Lite0's code with
seeded random weights at 32 px): real code, milliseconds per image, no ONNX export.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cifar_files
import livedata
import numpy as np
import usf_files
from PIL import Image

PREDICTOR = livedata.PREDICTOR
HASH_MODEL = "cifar10-hash"
COLLECTION = "cifar10"
BRIDGES = {"CAT": ("TABBY", "LYNX", "COUGAR"), "DOG": ("BEAGLE", "COLLIE", "TERRIER")}
"""Norm words linked to ImageNet class words, so that text queries reach images."""

_tiny = None


def tiny_predictor():
    """One tiny predictor for the whole run (loaded by the real `load_predictor`)."""
    global _tiny
    if _tiny is None:
        _tiny = livedata.tiny_predictor()
    return _tiny


def use_tiny_predictor(monkeypatch) -> None:
    """Every `load_predictor` call (the CLI's, the encoder's, a saved index's) gets the tiny one."""
    import iwan.vision.predictors as predictors

    tiny = tiny_predictor()

    def load_predictor(name=PREDICTOR, *args, **kwargs):
        if name != PREDICTOR:
            raise ValueError(f"the README test environment has only the {PREDICTOR} predictor, not {name!r}")
        return tiny

    monkeypatch.setattr(predictors, "load_predictor", load_predictor)


def write_norms(folder: Path, seed: int = 0) -> Path:
    """One Appendix A file: the test appendix, ImageNet class words cueing each other, and BRIDGES."""
    rng = np.random.default_rng(seed)
    words = livedata.imagenet_words()
    lines = [usf_files.HEADER_LINE]
    seen = set()

    def add(line: str) -> None:
        cue, target = (field.strip().lower() for field in line.split(",")[:2])
        if (cue, target) not in seen:
            seen.add((cue, target))
            lines.append(line)

    for line in itertools.chain.from_iterable(usf_files.APPENDIX.values()):
        add(line)
    for cue, targets in BRIDGES.items():
        for target in targets:
            if target in words:
                add(usf_files.row(cue=cue, target=target, fsg=".300", bsg=".100"))
    for cue in words:
        for target in rng.choice(words, 3, replace=False):
            if target != cue:
                add(usf_files.row(cue=cue, target=target, fsg=f"{rng.uniform(0.01, 0.9):.3f}",
                                  bsg=f"{rng.uniform(0.01, 0.9):.3f}"))
    folder.mkdir(parents=True, exist_ok=True)
    return usf_files.write(folder, *lines, name="Cue_Target_Pairs.A-Z")


def save_hash_model(home: Path) -> Path:
    """A random small-CNN hash network for CIFAR-10's 10 classes, with their class embeddings."""
    import torch

    from hashing.net import HashConfig, HashNet, save_checkpoint
    from hashing.recipes import dataset_class_embeddings
    from iwan.datasets.hierarchies import shipped_hierarchy

    names = cifar_files.CIFAR10_CLASSES
    embeddings = dataset_class_embeddings("cifar10", names, shipped_hierarchy("cifar10"))
    torch.manual_seed(0)
    network = HashNet(HashConfig(backbone="small-cnn", n_classes=10, embedding_dim=embeddings.shape[1], hidden=(32,)))
    network.prepare(torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8))
    return save_checkpoint(home / "models" / HASH_MODEL / "best.pt", network.eval(), embeddings, names)


def iwan(*args: str) -> str:
    """Run an `iwan` command in this process (so that it loads the tiny predictor); its output."""
    from click.testing import CliRunner

    from iwan.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exit_code != 0:
        raise RuntimeError(f"`iwan {' '.join(args)}` failed ({result.exit_code}): {result.output}") from result.exception
    return result.output


def jpeg(path: Path, seed: int) -> Path:
    pixels = cifar_files.images(1, seed=seed)[0]
    Image.fromarray(pixels).save(path, quality=95)
    return path


def prepare(root: Path, monkeypatch) -> Path:
    """The environment under `root` (IWAN_DATABASE_URL already set by the `engine` fixture);
    returns the working folder, made the current one."""
    home, data, work = root / "home", root / "data", root / "work"
    for folder in (home, data, work):
        folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("IWAN_HOME", str(home))
    monkeypatch.setenv("IWAN_DATA_DIR", str(data))
    monkeypatch.chdir(work)
    use_tiny_predictor(monkeypatch)

    iwan("norms", "load", str(write_norms(root / "norms")))
    cifar_files.write_cifar10_jpgs(data, per_class=2)
    checkpoint = save_hash_model(home)
    for split in ("train", "test"):  # train first: the test images get the higher ids
        iwan("predict", "--dataset", "cifar10", "--split", split, "--predictor", PREDICTOR)
        iwan("hash", "encode", "--dataset", "cifar10", "--split", split, "--checkpoint", str(checkpoint),
             "--name", HASH_MODEL, "--backend", "torch")
    iwan("collection", "create", COLLECTION, "--dataset", "cifar10", "--split", "train", "--predictor", PREDICTOR,
         "--hash-model", HASH_MODEL)
    jpeg(work / "cat.jpg", seed=101)
    jpeg(work / "query.jpg", seed=102)
    return work
