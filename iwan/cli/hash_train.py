"""`hash train`: train the semantic hash network on a data set and report its test accuracy.

Backbones: `precomputed-efficientnet-lite0` trains the head on the cached EfficientNet-Lite0
features (the frozen-backbone path, minutes on a CPU); the others train on the images.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from pathlib import Path

import click

from hashing.net import PRECOMPUTED, HashConfig, HashNet, load_checkpoint
from hashing.recipes import BACKBONE_CHOICES, dataset_class_embeddings, feature_extractor, recipe
from hashing.train import (
    LAST_CHECKPOINT,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    EpochRecord,
    TrainConfig,
    fit,
    measure,
)
from iwan.cli.common import CliContext, pass_context
from iwan.config import Settings
from iwan.datasets.hierarchies import shipped_hierarchy
from iwan.vision.backbones import PRETRAINABLE, pretrained_weights  # importing it registers the ImageNet backbones
from iwan.vision.hash_inputs import cached_flips, network_inputs


@click.command("train")
@click.option("--dataset", "spec", default="cifar10", show_default=True, help="Data set spec (see iwan.datasets.loaders).")
@click.option("--backbone", type=click.Choice(BACKBONE_CHOICES), default=BACKBONE_CHOICES[0], show_default=True)
@click.option("--pretrained", help="Backbone weights: imagenet (default where there are some), none, or a state dict PATH.")
@click.option("--freeze-backbone", is_flag=True, help="Train only the head on top of the backbone.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak (one-cycle) or initial (cosine) learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS))
@click.option("--schedule", type=click.Choice(SCHEDULES))
@click.option("--weight-decay", type=click.FloatRange(min=0))
@click.option("--hidden", help="Decoder MLP widths, comma-separated (e.g. 1024 or 2048,1024).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout after each decoder layer.")
@click.option("--input-dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout on the backbone features.")
@click.option("--feature-noise", type=click.FloatRange(min=0), help="Gaussian noise on cached features (x their std).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Of the training forward passes (auto: bf16 where native).")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), help="SGD's (Nesterov) momentum.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), help="Of the cross-entropy terms.")
@click.option("--auxiliary-weight", type=click.FloatRange(min=0),
              help="Cross-entropy of a training-only linear classifier on the backbone features (0: none).")
@click.option("--head-lr-scale", type=click.FloatRange(min=0, min_open=True), help="Head learning rate / --lr.")
@click.option("--bias-lr-scale", type=click.FloatRange(min=0, min_open=True), help="Backbone bias and norm learning rate / --lr.")
@click.option("--lookahead/--no-lookahead", default=None, help="Pull the weights back to their running average every 5 steps.")
@click.option("--translate", type=click.IntRange(min=0), help="Largest random image shift in pixels (0: an eighth of the side).")
@click.option("--mirror-test/--no-mirror-test", default=None,
              help="Test figures from each image's and its mirror image's hash activations, averaged.")
@click.option(
    "--flipped-features", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
    help="Mirrored-image features as augmentation (precomputed): auto uses them when cached, yes computes them.",
)
@click.option("--hierarchy", type=click.Path(dir_okay=False, path_type=Path), help="[default: data/<dataset>/parent-child.txt]")
@click.option("--classification-weight", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Weight of the cross-entropy term; 0 drops the classification head.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="[default: <model_dir>/<dataset>-hash-<backbone>]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (progress goes to stderr).")
@pass_context
def train(ctx: CliContext, spec, backbone, pretrained, freeze_backbone, hierarchy, flipped_features, classification_weight, out, resume,
          device, as_json, **options):
    """Train the 48-bit semantic hash network towards hierarchy class embeddings."""
    import torch

    started = time.perf_counter()
    dataset_name = spec.partition(":")[0]
    kind = feature_extractor(backbone)
    chosen = {**recipe(backbone), **{name: value for name, value in options.items() if value is not None}}
    settings = ctx.settings
    out = out or settings.model_dir / f"{dataset_name}-hash-{backbone}"
    if (out / LAST_CHECKPOINT).exists() and not resume:
        raise click.UsageError(f"{out / LAST_CHECKPOINT} exists: pass --resume to continue it, or another --out")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device

    splits = _load_splits(spec, settings)
    try:
        hierarchy = hierarchy or shipped_hierarchy(dataset_name)
        embeddings = dataset_class_embeddings(spec, splits["train"].class_names, hierarchy)
    except (FileNotFoundError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    data = _inputs(splits, kind, flipped_features, settings)
    config = TrainConfig(
        classification_weight=classification_weight,
        **{f.name: chosen[f.name] for f in fields(TrainConfig) if f.name in chosen},
    )
    torch.manual_seed(config.seed)  # the initial weights: the same command trains the same network
    model = HashNet(
        HashConfig(
            backbone=PRECOMPUTED if kind else backbone,
            n_classes=len(embeddings),
            embedding_dim=embeddings.shape[1],
            feature_dim=data["train"].shape[1] if kind else 0,
            features=kind or "",
            hidden=_widths(chosen["hidden"]),
            classification=classification_weight > 0,
            dropout=chosen["dropout"],
            input_dropout=chosen["input_dropout"],
        ),
        pretrained=_weights(backbone, pretrained, settings),
    )
    if freeze_backbone:
        model.freeze_backbone()
    data_seconds = time.perf_counter() - started

    def report(record: EpochRecord) -> None:
        click.echo(
            f"epoch {record.epoch}/{config.epochs}  train loss {record.train_loss:.4f}  val loss {record.val_loss:.4f}  "
            f"val acc {record.val_accuracy:.2%}  lr {record.lr:.2e}  {record.seconds:.0f} s{'  best' if record.best else ''}",
            err=as_json,
        )

    mirror = chosen["mirror_test"] and not kind
    result = fit(
        model, data["train"], data["train_labels"], embeddings, config, out,
        flipped=data.get("flipped"), class_names=splits["train"].class_names, resume=resume, device=device,
        on_epoch=report,
    )
    summary = {
        "dataset": spec,
        "backbone": backbone,
        "architecture": model.config.describe(),
        "train_config": asdict(config),
        "flipped_features": "flipped" in data,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "best_checkpoint": str(result.best_path),
        "last_checkpoint": str(result.last_path),
        "mirror_test": mirror,
        **_test_figures(result.best_path, data, device, classification_weight, mirror),
        "data_seconds": round(data_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary)


def _widths(text: str | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(text, tuple):
        return text
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of widths such as 2048,1024", param_hint="--hidden") from None


def _weights(backbone: str, pretrained: str | None, settings: Settings) -> str | Path | None:
    """None (random), 'imagenet' or a path; HashNet says which backbone takes which. ImageNet
    weights that are a download (ResNet-50's) are given as their file where the settings say."""
    if pretrained == "none":
        return None
    if pretrained in (None, "imagenet") and backbone in PRETRAINABLE:
        return pretrained_weights(backbone, settings)
    return pretrained


def _load_splits(spec: str, settings: Settings) -> dict:
    from iwan.datasets.loaders import DatasetNotFoundError, load_dataset

    splits = {"train": load_dataset(spec, "train", settings=settings)}
    try:
        splits["test"] = load_dataset(spec, "test", settings=settings)
    except DatasetNotFoundError:
        click.echo(f"{spec} has no test split: the summary reports no test accuracy", err=True)
    return splits


def _inputs(splits: dict, kind: str | None, flipped_features: str, settings: Settings) -> dict:
    """train / test inputs and labels: cached features for precomputed backbones, else images."""
    data = {f"{name}_labels": ds.fine_labels for name, ds in splits.items()}
    data.update({name: network_inputs(ds, kind, settings=settings) for name, ds in splits.items()})
    if kind is None:
        return data
    train = splits["train"]
    if flipped_features == "yes" or (flipped_features == "auto" and cached_flips(train, kind, settings=settings)):
        data["flipped"] = network_inputs(train, kind, flip=True, settings=settings)
    elif flipped_features == "auto":
        click.echo("no cached mirrored-image features: training without them (--flipped-features yes computes them)", err=True)
    return data


def _test_figures(best_path: Path, data: dict, device: str, classification_weight: float, mirror: bool) -> dict:
    if "test" not in data:
        return {"test_accuracy": None, "test_code_accuracy": None, "test_loss": None}
    best = load_checkpoint(best_path, device=device)
    result = measure(
        best.net, data["test"], data["test_labels"], best.class_embeddings,
        classification_weight=classification_weight, mirror=mirror,
    )
    return {"test_accuracy": result.accuracy, "test_code_accuracy": result.code_accuracy, "test_loss": result.loss}


def _print_summary(summary: dict) -> None:
    accuracy = summary["test_accuracy"]
    lines = [
        f"{summary['dataset']} / {summary['backbone']}: {summary['architecture']}",
        "test accuracy (nearest class embedding" + (", mirror-averaged" if summary["mirror_test"] else "") + "): "
        + (f"{accuracy:.2%} (from binary codes {summary['test_code_accuracy']:.2%})" if accuracy is not None else "n/a (no test split)"),
        f"best val loss {summary['best_val_loss']:.4f} (epoch {summary['best_epoch']})",
        f"best checkpoint {summary['best_checkpoint']}",
        f"{summary['seconds'] / 60:.1f} min ({summary['data_seconds']:.0f} s loading data and features)",
    ]
    click.echo("\n".join(lines))
