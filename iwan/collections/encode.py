"""Encode a registered split with a trained hash network: codes and embeddings into PostgreSQL.

With a classification head, the network's class probabilities are stored too, as word
predictions under the same model name, so IWAN can run on the hash model's class words.

The split is encoded in fixed slices (`slices`), each by `encode_inputs`: the same slices and
the same function as the workers of a Ray cluster run (iwan.collections.distributed), so both
store the same rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from sqlalchemy.engine import Engine
from tqdm import tqdm

import iwan.vision.backbones  # noqa: F401 - registers the ImageNet backbones that checkpoints may name
from hashing.codes import pack_activations
from hashing.inference import EVAL_BATCH_SIZE, embed
from hashing.net import PRECOMPUTED, HashNet, load_checkpoint
from iwan.config import STORED_PREDICTIONS, Settings
from iwan.db import images as image_store
from iwan.db.codes import store_codes
from iwan.vision.features import CHUNK_SIZE
from iwan.vision.hash_inputs import network_inputs


@dataclass(frozen=True)
class EncodeSummary:
    model: str
    dataset: str
    split: str
    images: int
    embedding_dim: int
    distinct_codes: int
    predictions_stored: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EncodedSlice:
    embeddings: np.ndarray  # (n, d) float32
    codes: np.ndarray  # (n,) uint64
    class_indices: np.ndarray | None  # (n, top) of the classification head, most probable first
    probabilities: np.ndarray | None  # (n, top) float32, descending


def slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of the network passes over n images: the feature cache's chunks
    (iwan.vision.features.CHUNK_SIZE) cut into `batch_size` images."""
    return [(start, min(start + batch_size, chunk + CHUNK_SIZE, n))
            for chunk in range(0, n, CHUNK_SIZE) for start in range(chunk, min(chunk + CHUNK_SIZE, n), batch_size)]


def encode_inputs(net: HashNet, inputs: np.ndarray) -> EncodedSlice:
    """One network pass over a slice of inputs (pixels, or a precomputed backbone's features)."""
    # Image backbones encode each image with its mirror image, as `hash train` measures them.
    mirror = net.config.backbone != PRECOMPUTED
    embeddings, activations = embed(net, inputs, batch_size=max(len(inputs), 1), mirror=mirror)
    if not net.config.classification:
        return EncodedSlice(embeddings, pack_activations(activations), None, None)
    with torch.no_grad():
        # a classification net has a classifier, so its logits are there
        logits = cast(torch.Tensor, net.from_hash(torch.from_numpy(activations)).logits)
    probabilities = torch.softmax(logits.float(), dim=1).numpy()
    top = min(STORED_PREDICTIONS, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    return EncodedSlice(embeddings, pack_activations(activations), order, np.take_along_axis(probabilities, order, axis=1))


def class_names(checkpoint_names: list[str] | None, dataset_names: list[str]) -> list[str]:
    """The names a classification head's classes are registered under."""
    return list(checkpoint_names or dataset_names)


def encode_split(
    engine: Engine, checkpoint: Path, dataset, model_name: str, backend: str = "onnx", progress: bool = True,
    batch_size: int | None = None, *, settings: Settings,
) -> EncodeSummary:
    """Store (replacing any earlier) the codes and embeddings of `dataset` under `model_name`
    (`settings`: where a precomputed backbone's predictor and its cached features are)."""
    loaded = load_checkpoint(checkpoint)
    net = loaded.net
    registered = image_store.register(engine, dataset)
    inputs = network_inputs(dataset, net.config.features, backend, progress, settings=settings)
    # An empty split still makes one (empty) pass, so the arrays below have their widths.
    cuts = slices(len(registered.ids), batch_size or EVAL_BATCH_SIZE) or [(0, 0)]
    with tqdm(total=len(registered.ids), desc=f"encode {dataset.name} {dataset.split}", unit="img",
              disable=not progress) as bar:
        parts = []
        for start, stop in cuts:
            parts.append(encode_inputs(net, inputs[start:stop]))
            bar.update(stop - start)
    codes = np.concatenate([p.codes for p in parts])
    store_codes(engine, model_name, registered.ids, np.concatenate([p.embeddings for p in parts]), codes)
    if net.config.classification:
        from iwan.db.predictions import register_classes, replace_predictions

        register_classes(engine, model_name, class_names(loaded.class_names, dataset.class_names))
        replace_predictions(engine, model_name, registered.ids, np.concatenate([cast(np.ndarray, p.class_indices) for p in parts]),
                            np.concatenate([cast(np.ndarray, p.probabilities) for p in parts]))
    return EncodeSummary(
        model=model_name,
        dataset=dataset.name,
        split=dataset.split,
        images=len(registered.ids),
        embedding_dim=net.config.embedding_dim,
        distinct_codes=len(np.unique(codes)),
        predictions_stored=net.config.classification,
    )
