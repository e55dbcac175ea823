"""What every retrieval method reads of an image: the predictor's top classes with their
probabilities and, with a hash model, its embedding and 48-bit code, for images decoded by
iwan.vision.decode. The collections' ingestion and the search pipeline encode through it alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from iwan.config import STORED_PREDICTIONS, Settings
from iwan.vision.decode import MemoryBudget


@dataclass(frozen=True)
class Encoded:
    """What a batch of images is represented by, row per image."""

    class_indices: np.ndarray
    """(n, STORED_PREDICTIONS) int64 predictor classes, most probable first."""
    probabilities: np.ndarray
    """(n, STORED_PREDICTIONS) float32."""
    embeddings: np.ndarray | None = None
    """(n, d) float32 hash-model embeddings, with a hash model."""
    codes: np.ndarray | None = None
    """(n,) uint64 48-bit codes, with a hash model."""

    @classmethod
    def concatenate(cls, parts: list[Encoded]) -> Encoded:
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(np.concatenate([p.class_indices for p in parts]), np.concatenate([p.probabilities for p in parts]),
                   None if first.embeddings is None else np.concatenate([cast(np.ndarray, p.embeddings) for p in parts]),
                   None if first.codes is None else np.concatenate([cast(np.ndarray, p.codes) for p in parts]))


def work_bytes(image: np.ndarray) -> int:
    """What encoding one image holds at its peak: float copies of its pixels before the models
    resize them, and the networks' activations (about 8 MiB a 224-pixel image under ONNX Runtime,
    measured with 16 concurrent passes; 16 MiB allowed)."""
    return image.size * 8 + (16 << 20)


class Encoder:
    """A collection's models: its word predictor and, optionally, its hash network (loaded lazily)."""

    def __init__(self, predictor: str, hash_model: str | None, backend: str = "onnx", *,
                 settings: Settings | None = None, loaded_predictor=None, net=None):
        """`backend` onnx, as `iwan predict` stores a split's predictions; `settings` say where the
        predictor's files and the hash models' checkpoints (Settings.model_dir) are; they are
        needed unless `loaded_predictor` and `net` (a hash net) are models already loaded (e.g.
        small ones for tests) to use instead."""
        self.predictor_name = predictor
        self.hash_model = hash_model
        self.settings = settings
        self.backend = backend
        self._predictor = loaded_predictor
        self._net = net

    @property
    def predictor(self):
        if self._predictor is None:
            from iwan.vision.predictors import load_predictor

            if self.settings is None:
                raise ValueError(f"predictor {self.predictor_name!r}: no settings given to load it with")
            self._predictor = load_predictor(self.predictor_name, backend=self.backend, settings=self.settings)
        return self._predictor

    @property
    def net(self):
        """The hash model's net (torch module), or None without a hash model."""
        if self._net is None and self.hash_model is not None:
            import iwan.vision.backbones  # noqa: F401 - a checkpoint's backbone may be a predictor's
            from hashing.net import load_checkpoint

            if self.settings is None:
                raise ValueError(f"hash model {self.hash_model!r}: no settings given to find its checkpoint with")
            path = self.settings.model_dir / self.hash_model / "best.pt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"hash model {self.hash_model!r} has no checkpoint at {path}: train it with "
                    f"`iwan hash train --out {path.parent}`"
                )
            self._net = load_checkpoint(path).net
        return self._net

    @property
    def categories(self) -> list[str]:
        return self.predictor.categories

    def encode(self, images: list[np.ndarray], budget: MemoryBudget | None = None) -> Encoded:
        """Predictions (and embeddings and codes) of uint8 (H, W, 3) images of any sizes; images of
        one size run as one batch, through the same preprocessing as a data set's images. With a
        `budget`, the images are encoded in runs whose passes fit half of it, each holding a
        reservation (ImageBusy when the budget stays full)."""
        if budget is None:
            return self._encode(images)
        parts: list[list[np.ndarray]] = []
        run: list[np.ndarray] = []
        held = 0
        for image in images:
            need = work_bytes(image)
            if run and held + need > budget.limit // 2:
                parts.append(run)
                run, held = [], 0
            run.append(image)
            held += need
        parts.append(run)
        encoded = []
        for part in parts:
            with budget.reserve(sum(work_bytes(image) for image in part), f"{len(part)} image(s)"):
                encoded.append(self._encode(part))
        return Encoded.concatenate(encoded)

    def _encode(self, images: list[np.ndarray]) -> Encoded:
        n = len(images)
        indices = np.full((n, STORED_PREDICTIONS), -1, dtype=np.int64)
        probabilities = np.zeros((n, STORED_PREDICTIONS), dtype=np.float32)
        net = self.net
        embeddings: np.ndarray | None = None
        codes: np.ndarray | None = None
        if net is not None:
            embeddings = np.zeros((n, net.config.embedding_dim), dtype=np.float32)
            codes = np.zeros(n, dtype=np.uint64)
        for shape in {image.shape for image in images}:
            rows = np.array([i for i, image in enumerate(images) if image.shape == shape])
            pixels = np.stack([images[i] for i in rows])
            need_features = net is not None and net.config.backbone == "precomputed"
            predicted = self.predictor.predict(pixels, top=STORED_PREDICTIONS, features=need_features)
            indices[rows], probabilities[rows] = predicted.indices, predicted.probabilities
            if embeddings is not None and codes is not None:  # made above exactly when there is a net
                embeddings[rows], codes[rows] = self._hash(net, pixels, predicted.features)
        return Encoded(indices, probabilities, embeddings, codes)

    def _hash(self, net, pixels: np.ndarray, features: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        from hashing.codes import pack_activations
        from hashing.inference import embed

        if net.config.backbone == "precomputed":
            if net.config.features != self.predictor_name:
                raise ValueError(
                    f"hash model {self.hash_model!r} reads {net.config.features} features, but the "
                    f"collection's predictor is {self.predictor_name}: create the collection with that predictor"
                )
            # encode asks the predictor for features whenever the backbone is precomputed
            embeddings, activations = embed(net, cast(np.ndarray, features))
        else:
            # As `iwan hash encode` stores a split's codes: each image averaged with its mirror image.
            embeddings, activations = embed(net, pixels, mirror=True)
        return embeddings, pack_activations(activations)
