"""Training the hash network on tiny synthetic data: learning, resuming, the best checkpoint, encoding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hashing.codes import pack_activations
from hashing.embeddings import class_embeddings
from hashing.hierarchy import ClassHierarchy
from hashing.inference import embed
from hashing.net import HashConfig, HashNet, load_checkpoint
from hashing.train import TrainConfig, crop_and_flip, fit, measure, split_validation

DIM = 16


@pytest.fixture(autouse=True)
def _one_thread():
    # Networks this small run faster on one thread, and the cores are shared with other work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# Two superclasses of two classes each: 0, 1 under 4; 2, 3 under 5; root 6.
EMBEDDINGS = class_embeddings(ClassHierarchy.from_pairs([(6, 4), (6, 5), (4, 0), (4, 1), (5, 2), (5, 3)]))
CONFIG = TrainConfig(epochs=8, batch_size=32, lr=1e-2, optimizer="adam", schedule="onecycle", val_fraction=0.2)


def _data(n: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    prototypes = np.random.default_rng(123).normal(size=(4, DIM)) * 1.5
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    return (prototypes[labels] + rng.normal(size=(n, DIM)) * noise).astype(np.float16), labels


def _model(hidden=(32,), seed: int = 0) -> HashNet:
    torch.manual_seed(seed)
    config = HashConfig(backbone="precomputed", n_classes=4, embedding_dim=4, feature_dim=DIM, hidden=hidden, bits=16)
    return HashNet(config)


def test_training_lowers_the_loss_and_classifies_by_nearest_class_embedding(tmp_path):
    features, labels = _data(400, seed=1)
    model = _model()
    before = measure(model, *_data(300, seed=2), EMBEDDINGS)
    result = fit(model, features, labels, EMBEDDINGS, CONFIG, tmp_path, progress=False)
    losses = [r.train_loss for r in result.history]
    assert len(losses) == CONFIG.epochs and losses[-1] < 0.5 * losses[0]

    best = load_checkpoint(result.best_path)
    after = measure(best.net, *_data(300, seed=2), EMBEDDINGS)
    assert after.loss < before.loss and before.accuracy < 0.6
    assert after.accuracy >= 0.95 and after.code_accuracy >= 0.9


def test_flipped_features_and_noise_are_used_as_augmentation(tmp_path):
    features, labels = _data(200, seed=1)
    garbage = np.full_like(features, 100.0)
    kwargs = dict(progress=False)
    clean = fit(_model(), features, labels, EMBEDDINGS, CONFIG, tmp_path / "clean", **kwargs)
    mirrored = fit(_model(), features, labels, EMBEDDINGS, CONFIG, tmp_path / "mirror", flipped=garbage, **kwargs)
    # Half of each batch came from the (useless) mirrored features, so training fit the data worse.
    assert mirrored.history[-1].train_loss > clean.history[-1].train_loss + 0.05
    noisy_config = dataclasses.replace(CONFIG, feature_noise=3.0)
    noisy = fit(_model(), features, labels, EMBEDDINGS, noisy_config, tmp_path / "noisy", **kwargs)
    assert noisy.history[-1].train_loss > clean.history[-1].train_loss + 0.05


# The small CNN's recipe: SGD, triangle schedule, lookahead, auxiliary classifier, label smoothing.
AIRBENCH_LIKE = dataclasses.replace(
    CONFIG, optimizer="sgd", schedule="triangle", lr=0.5, momentum=0.85, lookahead=True, auxiliary_weight=1.0,
    label_smoothing=0.2, bias_lr_scale=4.0,
)


@pytest.mark.parametrize("base", [CONFIG, AIRBENCH_LIKE], ids=["adam-onecycle", "sgd-lookahead-auxiliary"])
def test_resume_continues_from_the_saved_epoch_as_if_never_stopped(tmp_path, base):
    features, labels = _data(200, seed=1)
    config = dataclasses.replace(base, epochs=4)
    straight = _model()
    fit(straight, features, labels, EMBEDDINGS, config, tmp_path / "straight", progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(_model(), features, labels, EMBEDDINGS, config, tmp_path / "resumed", on_epoch=stop_after_two, progress=False)
    with pytest.raises(FileExistsError, match="resume that run"):
        fit(_model(), features, labels, EMBEDDINGS, config, tmp_path / "resumed", progress=False)

    seen = []
    resumed = _model(seed=99)  # its own initial weights must be replaced by the checkpoint's
    result = fit(
        resumed, features, labels, EMBEDDINGS, config, tmp_path / "resumed", resume=True, on_epoch=seen.append,
        progress=False,
    )
    assert [r.epoch for r in seen] == [3, 4] and [r.epoch for r in result.history] == [1, 2, 3, 4]
    for got, want in zip(resumed.state_dict().values(), straight.state_dict().values()):
        torch.testing.assert_close(got, want)


def test_the_small_cnn_recipe_learns(tmp_path):
    features, labels = _data(400, seed=1)
    result = fit(_model(), features, labels, EMBEDDINGS, AIRBENCH_LIKE, tmp_path, progress=False)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert measure(load_checkpoint(result.best_path).net, *_data(300, seed=2), EMBEDDINGS).accuracy >= 0.9
    # The auxiliary classifier trains with the network and is kept for resuming, not in best.pt.
    last = load_checkpoint(result.last_path)
    assert last.training["auxiliary"]["weight"].shape == (4, DIM)
    assert not any("auxiliary" in key for key in last.net.state_dict())


def test_resume_refuses_other_settings_or_architecture(tmp_path):
    features, labels = _data(100, seed=1)
    config = dataclasses.replace(CONFIG, epochs=1)
    fit(_model(), features, labels, EMBEDDINGS, config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="epochs 1 there, 3 here"):
        fit(_model(), features, labels, EMBEDDINGS, dataclasses.replace(config, epochs=3), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="hidden \\(32,\\) there, \\(8,\\) here"):
        fit(_model(hidden=(8,)), features, labels, EMBEDDINGS, config, tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="other class embeddings"):
        fit(_model(), features, labels, EMBEDDINGS[[1, 0, 2, 3]], config, tmp_path, resume=True, progress=False)


def test_best_checkpoint_is_the_epoch_of_lowest_validation_loss(tmp_path):
    # Random labels on noise: the network memorises the training split and validation loss
    # climbs, so the best epoch is an early one and differs from the last.
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(160, DIM)).astype(np.float32), rng.integers(0, 4, 160)
    config = dataclasses.replace(CONFIG, epochs=12, lr=3e-2, weight_decay=0.0, val_fraction=0.25)
    model = _model(hidden=(256,))
    result = fit(model, features, labels, EMBEDDINGS, config, tmp_path, progress=False)
    val_losses = [r.val_loss for r in result.history]
    assert result.best_epoch == 1 + int(np.argmin(val_losses)) < config.epochs
    assert [r.best for r in result.history].count(True) >= 1 and result.history[result.best_epoch - 1].best

    _, val_idx = split_validation(len(labels), config.val_fraction, config.seed)
    best = load_checkpoint(result.best_path)
    last = load_checkpoint(result.last_path)
    best_val = measure(best.net, features[val_idx], labels[val_idx], EMBEDDINGS)
    assert best_val.loss == pytest.approx(result.best_val_loss, abs=1e-5) == pytest.approx(min(val_losses), abs=1e-5)
    assert measure(last.net, features[val_idx], labels[val_idx], EMBEDDINGS).loss > best_val.loss
    assert last.training["epoch"] == config.epochs and best.training is None


def test_embed_gives_embeddings_and_hash_activations_for_codes(tmp_path):
    features, _ = _data(37, seed=3)
    model = _model().eval()
    embeddings, hashes = embed(model, features, batch_size=10)
    assert embeddings.dtype == np.float32 and embeddings.shape == (37, 4) and hashes.shape == (37, 16)
    expected = model(torch.as_tensor(features))
    np.testing.assert_allclose(embeddings, expected.embedding.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(hashes, expected.hash.detach().numpy(), atol=1e-6)
    codes = pack_activations(hashes)
    assert codes.dtype == np.uint64 and codes.shape == (37,)


def test_small_cnn_trains_on_uint8_images(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 4, 40)
    torch.manual_seed(0)
    model = HashNet(HashConfig(backbone="small-cnn", n_classes=4, embedding_dim=4, hidden=(16,)))
    config = dataclasses.replace(CONFIG, epochs=1, batch_size=16)
    result = fit(model, images, labels, EMBEDDINGS, config, tmp_path, progress=False)
    assert np.isfinite(result.history[0].train_loss) and result.best_path.is_file()


@pytest.mark.parametrize("shift", [0, 2])
def test_crop_and_flip_shifts_with_reflected_borders_and_mirrors_whole_images(shift):
    images = torch.arange(64 * 8 * 8 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(64, 8, 8, 3)
    out = crop_and_flip(images, torch.Generator().manual_seed(0), shift)
    assert out.shape == images.shape and out.dtype == torch.uint8
    pad = shift or 1  # 0 means an eighth of the side
    placements = [_placement(out[i].numpy(), images[i].numpy(), pad) for i in range(len(images))]
    assert None not in placements, "every output is a shifted (or mirrored) window of its reflected original"
    # Both orientations and shifts to either border turn up among 64 images.
    assert {m for m, _, _ in placements} == {False, True}
    assert {dy for _, dy, _ in placements} >= {0, 2 * pad} and {dx for _, _, dx in placements} >= {0, 2 * pad}


def _placement(out: np.ndarray, image: np.ndarray, pad: int):
    """(mirrored, dy, dx) of the window of the reflect-padded image that `out` is, or None."""
    side = image.shape[0]
    for mirrored in (False, True):
        source = image[:, ::-1] if mirrored else image
        padded = np.pad(source, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if np.array_equal(out, padded[dy : dy + side, dx : dx + side]):
                    return mirrored, dy, dx
    return None
