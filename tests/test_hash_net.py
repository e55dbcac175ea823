"""The hash network: output shapes and ranges, input checks, checkpoints and their architecture check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashing import net as hash_net
from hashing.net import (
    BackboneNotRegistered,
    HashConfig,
    HashNet,
    ImageInput,
    load_checkpoint,
    register_backbone,
    registered_backbones,
    save_checkpoint,
)

FEATURES = 24


def _precomputed(**overrides) -> HashNet:
    config = dict(backbone="precomputed", n_classes=5, embedding_dim=5, feature_dim=FEATURES, hidden=(16,), bits=12)
    torch.manual_seed(0)
    return HashNet(HashConfig(**{**config, **overrides})).eval()


@pytest.mark.parametrize("classification", [True, False])
def test_precomputed_outputs_are_unit_embeddings_and_sigmoid_hashes(classification):
    model = _precomputed(classification=classification)
    embedding, hashed, logits = model(torch.randn(7, FEATURES) * 10)
    assert embedding.shape == (7, 5) and hashed.shape == (7, 12)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(7))
    assert ((hashed > 0) & (hashed < 1)).all()
    assert (logits.shape == (7, 5)) if classification else logits is None


def test_small_cnn_takes_uint8_images_of_any_size_and_rejects_features():
    torch.manual_seed(0)
    model = HashNet(HashConfig(backbone="small-cnn", n_classes=3, embedding_dim=3, hidden=(8,))).eval()
    assert model.config.feature_dim == 256
    for side in (32, 40):
        embedding, hashed, logits = model(torch.randint(0, 256, (2, side, side, 3), dtype=torch.uint8))
        assert embedding.shape == (2, 3) and hashed.shape == (2, 48) and logits.shape == (2, 3)
    with pytest.raises(ValueError, match="uint8 \\(N, H, W, 3\\)"):
        model(torch.randn(2, 256))


def test_small_cnn_whitening_decorrelates_the_training_patches():
    # Correlated channels and neighbouring pixels, as in real images.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 1, 16, 16))
    images = torch.tensor(base + 0.3 * rng.normal(size=(200, 3, 16, 16)) + 0.5 * np.roll(base, 1, axis=3), dtype=torch.float32)
    cnn = HashNet(HashConfig(backbone="small-cnn", n_classes=3, embedding_dim=3, hidden=(8,))).backbone[1]
    cnn.fit_whitening(images)
    weight = cnn.whiten.weight.detach()
    assert weight.shape == (24, 3, 2, 2) and not cnn.whiten.weight.requires_grad
    torch.testing.assert_close(weight[12:], -weight[:12])
    out = torch.nn.functional.conv2d(images, weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = out.T @ out / len(out)
    # Identity up to the eps that keeps near-zero variance directions from exploding.
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=0.05)


def test_mirror_averaging_averages_the_hash_activations_of_both_views():
    torch.manual_seed(0)
    model = HashNet(HashConfig(backbone="small-cnn", n_classes=3, embedding_dim=3, hidden=(8,))).eval()
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        mirrored = model.forward_mirrored(images)
        expected = (model(images).hash + model(images.flip(2)).hash) / 2
        torch.testing.assert_close(mirrored.hash, expected)
        torch.testing.assert_close(mirrored.embedding, model.from_hash(expected).embedding)
        assert not torch.allclose(mirrored.hash, model(images).hash)
    with pytest.raises(ValueError, match="mirror averaging needs images"):
        _precomputed().forward_mirrored(torch.randn(2, FEATURES))


def test_precomputed_rejects_features_of_another_width():
    with pytest.raises(ValueError, match=f"float \\(N, {FEATURES}\\) features, got .* shape \\(2, 9\\)"):
        _precomputed()(torch.randn(2, 9))


def test_frozen_backbone_keeps_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    model = HashNet(HashConfig(backbone="small-cnn", n_classes=3, embedding_dim=3, hidden=(8,)))
    model.freeze_backbone()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    out = model(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8))
    out.embedding.sum().backward()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.hash_layer.weight.grad is not None


def test_checkpoint_round_trip_reproduces_outputs_and_metadata(tmp_path):
    model = _precomputed()
    embeddings = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))[0]
    path = save_checkpoint(tmp_path / "best.pt", model, embeddings, ["a", "b", "c", "d", "e"])
    loaded = load_checkpoint(path, expect=model.config)
    x = torch.randn(6, FEATURES)
    for got, want in zip(loaded.net(x), model(x)):
        torch.testing.assert_close(got, want)
    assert loaded.net.config == model.config
    np.testing.assert_allclose(loaded.class_embeddings, embeddings, atol=1e-6)
    assert loaded.class_names == ["a", "b", "c", "d", "e"] and loaded.training is None
    assert not (tmp_path / "best.pt.partial").exists()


def test_checkpoint_of_another_architecture_names_both(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _precomputed(), np.eye(5))
    asked = HashConfig(backbone="small-cnn", n_classes=5, embedding_dim=5, hidden=(16,), bits=12)
    with pytest.raises(ValueError, match="another architecture") as err:
        load_checkpoint(path, expect=asked)
    message = str(err.value)
    assert "saved precomputed" in message and "asked for small-cnn" in message
    assert "backbone 'precomputed' there, 'small-cnn' here" in message
    with pytest.raises(ValueError, match="bits 12 there, 48 here"):
        load_checkpoint(path, expect=HashConfig(**{**_precomputed().config.__dict__, "bits": 48}))


def test_load_rejects_files_that_are_not_hash_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a hash-network checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def _toy_backbone(pretrained):
    return torch.nn.Sequential(ImageInput(4, (0.0,) * 3, (255.0,) * 3), torch.nn.Flatten()), 48


def test_a_checkpoint_whose_backbone_is_not_registered_says_which_and_how_to_register_it(tmp_path, monkeypatch):
    monkeypatch.setattr(hash_net, "_BUILDERS", dict(hash_net._BUILDERS))
    register_backbone("toy", _toy_backbone)
    assert register_backbone("toy", _toy_backbone) is _toy_backbone  # the same builder again is no error
    with pytest.raises(ValueError, match="'toy' is registered already"):
        register_backbone("toy", lambda pretrained: _toy_backbone(pretrained))
    with pytest.raises(ValueError, match="'precomputed' is registered already"):
        register_backbone("precomputed", _toy_backbone)
    torch.manual_seed(0)
    model = HashNet(HashConfig(backbone="toy", n_classes=3, embedding_dim=3, hidden=(8,))).eval()
    path = save_checkpoint(tmp_path / "best.pt", model, np.eye(3))
    del hash_net._BUILDERS["toy"]
    assert "toy" not in registered_backbones()
    with pytest.raises(BackboneNotRegistered) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "backbone 'toy' is not registered" in message
    assert "register_backbone('toy', builder)" in message and "iwan.vision.backbones" in message
    with pytest.raises(BackboneNotRegistered, match="backbone 'toy' is not registered"):
        HashConfig(backbone="toy", n_classes=3, embedding_dim=3)
    register_backbone("toy", _toy_backbone)
    images = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    torch.testing.assert_close(load_checkpoint(path).net(images).hash, model(images).hash)


def test_iwan_registers_its_imagenet_backbones():
    assert registered_backbones()[:2] == ("precomputed", "small-cnn")
    from iwan.vision.backbones import PRETRAINABLE

    assert set(PRETRAINABLE) == {"resnet50", "efficientnet-lite0", "alexnet"}
    assert set(PRETRAINABLE) <= set(registered_backbones())
    torch.manual_seed(0)
    model = HashNet(HashConfig(backbone="efficientnet-lite0", n_classes=3, embedding_dim=3, hidden=(8,))).eval()
    assert model.config.feature_dim == 1280
    with torch.no_grad():
        assert model(torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)).hash.shape == (1, 48)
