"""What a hash network eats, for a data set: its images' pixels, or the cached features of the
predictor a `precomputed` backbone was trained on (iwan.vision.features). hashing's fit and embed
take the arrays these return."""

from __future__ import annotations

import numpy as np

from iwan.config import Settings

FEATURE_BACKEND = "onnx"
"""The backend of the standing feature cache (scripts/extract_features.py); another one recomputes it."""


def network_inputs(dataset, features: str | None, backend: str = FEATURE_BACKEND, progress: bool = True,
                   flip: bool = False, *, settings: Settings) -> np.ndarray:
    """What a network eats: the images' pixels, or (features named) that extractor's cached
    features (the predictor and the cache where `settings` say)."""
    if not features:
        return dataset.images
    from iwan.vision.features import extract
    from iwan.vision.predictors import load_predictor

    predictor = load_predictor(features, backend=backend, settings=settings)
    return extract(predictor, dataset, flip=flip, progress=progress, cache_dir=settings.cache_dir).features.astype(np.float32)


def cached_flips(dataset, features: str, backend: str = FEATURE_BACKEND, *, settings: Settings) -> bool:
    """Whether the mirrored images' features of `dataset` are all cached already (in the settings' cache)."""
    from iwan.vision.features import CHUNK_SIZE, chunk_dir
    from iwan.vision.predictors import load_predictor

    predictor = load_predictor(features, backend=backend, settings=settings)
    cached = chunk_dir(predictor, dataset, flip=True, cache_dir=settings.cache_dir).glob("*.npz")
    return len(list(cached)) >= -(-len(dataset) // CHUNK_SIZE)
