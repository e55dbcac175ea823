"""Encode a registered split with a trained hash network: codes and embeddings into PostgreSQL.

With a classification head, the network's class probabilities are stored too, as word
predictions under the same model name, so IWAN can run on the hash model's class words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from sqlalchemy.engine import Engine

import iwan.vision.backbones  # noqa: F401 - registers the ImageNet backbones that checkpoints may name
from hashing.codes import pack_activations
from hashing.inference import embed
from hashing.net import PRECOMPUTED, load_checkpoint
from iwan.config import STORED_PREDICTIONS, Settings
from iwan.db import images as image_store
from iwan.db.codes import store_codes
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


def encode_split(
    engine: Engine, checkpoint: Path, dataset, model_name: str, backend: str = "onnx", progress: bool = True, *,
    settings: Settings,
) -> EncodeSummary:
    """Store the codes and embeddings of `dataset` under `model_name` (`settings`: where a
    precomputed backbone's predictor and its cached features are)."""
    loaded = load_checkpoint(checkpoint)
    net = loaded.net
    registered = image_store.register(engine, dataset)
    # Image backbones encode each image with its mirror image, as `hash train` measures them.
    mirror = net.config.backbone != PRECOMPUTED
    inputs = network_inputs(dataset, net.config.features, backend, progress, settings=settings)
    embeddings, activations = embed(net, inputs, progress=progress, mirror=mirror)
    codes = pack_activations(activations)
    store_codes(engine, model_name, registered.ids, embeddings, codes)
    stored_predictions = False
    if net.config.classification:
        from iwan.db.predictions import register_classes, replace_predictions

        with torch.no_grad():
            # a classification net has a classifier, so its logits are there
            logits = cast(torch.Tensor, net.from_hash(torch.from_numpy(activations)).logits)
        probabilities = torch.softmax(logits.float(), dim=1).numpy()
        top = min(STORED_PREDICTIONS, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
        names = loaded.class_names or list(dataset.class_names)
        register_classes(engine, model_name, names)
        replace_predictions(engine, model_name, registered.ids, order, np.take_along_axis(probabilities, order, axis=1))
        stored_predictions = True
    return EncodeSummary(
        model=model_name,
        dataset=dataset.name,
        split=dataset.split,
        images=len(registered.ids),
        embedding_dim=embeddings.shape[1],
        distinct_codes=len(np.unique(codes)),
        predictions_stored=stored_predictions,
    )
