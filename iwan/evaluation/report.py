"""Evaluation report: Markdown tables, a long-format CSV, the raw JSON and PNG figures.

The results structure `write_report` expects (plain, JSON-able; numpy scalars are fine):

    {
        "metadata": {"dataset": "CIFAR-100", "corpus_size": 50000, "query_size": 10000,
                     "predictor": "resnet50", "settings": {"top_iwk": 4, "top_wwk": 4}},
        "metrics": {                        # method -> metric -> cut-off k -> value in [0, 1]
            "IWAN": {"mAP": {1: 0.62, 20: 0.48}, "mHP": {1: 0.80, 20: 0.71}},
            "hash": {"mAP": {1: 0.55, 20: 0.40}, "mHP": {1: 0.75, 20: 0.66}},
        },
        "latency": {                        # optional, per method (see metrics.latency_summary)
            "IWAN": {"median_ms": 1.9, "p95_ms": 4.2, "throughput_qps": 480.0},
        },
        "sweep": {                          # optional: a topIWK sweep
            "top_iwk": [1, 2, ..., 10],
            "metrics": {"mAP@20": [...], "mHP@20": [...]},   # one value per topIWK
            "median_ms": {"IWAN": [...]},                     # optional, one value per topIWK
        },
        "settings_scatter": {               # optional: one point per setting
            "k": 20, "labels": ["iwk=1", ...], "mAP": [...], "mHP": [...],
        },
        "notes": ["Fusion beats ...", ...],  # optional: sentences under "Findings"
    }

Metric names are free text (e.g. "mHP (original mAHP)"); each gets a table and, when it has more
than one cut-off, a curve plot. Figures are drawn on `matplotlib.figure.Figure` with the Agg
canvas, so no global pyplot state or display is involved.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator, PercentFormatter

LATENCY_COLUMNS = (
    ("median_ms", "median (ms)"),
    ("p95_ms", "p95 (ms)"),
    ("throughput_qps", "throughput (queries/s)"),
)
DPI = 110


@dataclass(frozen=True)
class Gallery:
    """Example queries and, per method, each query's top results with their label names."""

    query_images: Sequence[np.ndarray]
    query_labels: Sequence[str]
    result_images: Mapping[str, Sequence[Sequence[np.ndarray]]]
    result_labels: Mapping[str, Sequence[Sequence[str]]]


def write_report(
    results: Mapping, out_dir: Path | str, gallery: Gallery | None = None
) -> dict[str, Path]:
    """Write report.md, metrics.csv, results.json and the figures; return them by name."""
    _check_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path]] = []

    for metric in _metric_names(results):
        curves = {
            m: results["metrics"][m][metric]
            for m in results["metrics"]
            if metric in results["metrics"][m]
        }
        if len({k for c in curves.values() for k in c}) > 1:
            path = plot_metric_curves(curves, metric, out / f"curve_{_slug(metric)}.png")
            figures.append((f"{metric} by cut-off", path))

    sweep = results.get("sweep")
    if sweep:
        path = plot_sweep(sweep["top_iwk"], sweep["metrics"], out / "sweep_top_iwk.png")
        figures.append(("Metrics by topIWK", path))
        if sweep.get("median_ms"):
            path = plot_time_sweep(sweep["top_iwk"], sweep["median_ms"], out / "time_top_iwk.png")
            figures.append(("Retrieval time by topIWK", path))

    scatter = results.get("settings_scatter")
    if scatter:
        path = plot_settings_scatter(
            scatter["labels"],
            scatter["mAP"],
            scatter["mHP"],
            out / "settings_scatter.png",
            k=scatter["k"],
        )
        figures.append((f"mAP@{scatter['k']} against mHP@{scatter['k']}", path))

    if gallery is not None:
        path = plot_query_gallery(
            gallery.query_images,
            gallery.query_labels,
            gallery.result_images,
            gallery.result_labels,
            out / "gallery.png",
        )
        figures.append(("Example queries", path))

    written = {path.name: path for _, path in figures}
    written["report.md"] = _write_markdown(results, figures, out / "report.md")
    written["metrics.csv"] = _write_csv(results, out / "metrics.csv")
    written["results.json"] = _write_json(results, out / "results.json")
    return written


def load_results(path: Path | str) -> dict:
    """Read results.json back, with the cut-offs as ints again (JSON keys are strings)."""
    results = json.loads(Path(path).read_text())
    results["metrics"] = {
        method: {metric: {int(k): v for k, v in by_k.items()} for metric, by_k in metrics.items()}
        for method, metrics in results["metrics"].items()
    }
    return results


def metric_rows(results: Mapping) -> list[tuple[str, str, int, float]]:
    """The long format of metrics.csv: (method, metric, k, value), sorted by method order then k."""
    return [
        (method, metric, int(k), float(value))
        for method, metrics in results["metrics"].items()
        for metric, by_k in metrics.items()
        for k, value in sorted(by_k.items(), key=lambda kv: int(kv[0]))
    ]


def plot_metric_curves(
    curves: Mapping[str, Mapping[int, float]], metric: str, path: Path | str
) -> Path:
    """One line per method: `metric` (a fraction) against the cut-off k."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for method, by_k in curves.items():
        by_int = {int(k): v for k, v in by_k.items()}
        ks = sorted(by_int)
        ax.plot(ks, [by_int[k] for k in ks], marker="o", markersize=3, label=method)
    # Cut-offs like 1, 5, 10, ..., 250 crowd the left of a linear axis.
    ax.set_xscale("log")
    all_ks = sorted({int(k) for by_k in curves.values() for k in by_k})
    if len(all_ks) <= 12:
        ax.set_xticks(all_ks, [str(k) for k in all_ks])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set(
        title=f"{metric} by cut-off k",
        xlabel="cut-off k (results per query, log scale)",
        ylabel=metric,
    )
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(title="method")
    return _save(fig, path)


def plot_sweep(
    top_iwk: Sequence[int], series: Mapping[str, Sequence[float]], path: Path | str
) -> Path:
    """Metrics (fractions, e.g. "mAP@20" and "mHP@20") against topIWK."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, values in series.items():
        _check_length(values, top_iwk, name)
        ax.plot(top_iwk, values, marker="o", label=name)
    ax.set(
        title="Retrieval quality by topIWK",
        xlabel="topIWK (predicted words per image)",
        ylabel="score",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(title="metric")
    return _save(fig, path)


def plot_time_sweep(
    top_iwk: Sequence[int], milliseconds: Mapping[str, Sequence[float]], path: Path | str
) -> Path:
    """Retrieval time per query (ms) against topIWK, one line per method."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, values in milliseconds.items():
        _check_length(values, top_iwk, name)
        ax.plot(top_iwk, values, marker="o", label=name)
    ax.set(
        title="Retrieval time by topIWK",
        xlabel="topIWK (predicted words per image)",
        ylabel="median time per query (ms)",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="method")
    return _save(fig, path)


def plot_settings_scatter(
    labels: Sequence[str],
    map_values: Sequence[float],
    mhp_values: Sequence[float],
    path: Path | str,
    k: int = 20,
) -> Path:
    """mAP@k against mHP@k, one labelled point per setting."""
    _check_length(map_values, labels, "mAP values")
    _check_length(mhp_values, labels, "mHP values")
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    ax.scatter(map_values, mhp_values, s=30)
    for label, x, y in zip(labels, map_values, mhp_values, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(title=f"mAP@{k} against mHP@{k} across settings", xlabel=f"mAP@{k}", ylabel=f"mHP@{k}")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_query_gallery(
    query_images: Sequence[np.ndarray],
    query_labels: Sequence[str],
    result_images: Mapping[str, Sequence[Sequence[np.ndarray]]],
    result_labels: Mapping[str, Sequence[Sequence[str]]],
    path: Path | str,
) -> Path:
    """A grid with one row per (query, method): the query, then that method's top results.

    Images are uint8 HxWx3 arrays; each result's label name sits underneath, green when it
    matches the query's label and red otherwise.
    """
    _check_length(query_labels, query_images, "query_labels")
    methods = list(result_images)
    if not methods or set(methods) != set(result_labels):
        raise ValueError("result_images and result_labels need the same, non-empty set of methods")
    for method in methods:
        _check_length(result_images[method], query_images, f"result_images[{method!r}]")
        _check_length(result_labels[method], query_images, f"result_labels[{method!r}]")
    n_cols = 1 + max(len(row) for m in methods for row in result_images[m])
    n_rows = len(query_images) * len(methods)
    fig = Figure(figsize=(1.25 * n_cols, 1.55 * n_rows))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for q, (query, query_label) in enumerate(zip(query_images, query_labels, strict=True)):
        for m, method in enumerate(methods):
            row = axes[q * len(methods) + m]
            row[0].imshow(_rgb(query))
            row[0].set_title(f"query: {query_label}", fontsize=8, fontweight="bold")
            row[0].text(
                -0.08,
                0.5,
                method,
                transform=row[0].transAxes,
                rotation=90,
                ha="right",
                va="center",
                fontsize=8,
            )
            labels = result_labels[method][q]
            _check_length(labels, result_images[method][q], f"result_labels[{method!r}][{q}]")
            for i, (image, label) in enumerate(zip(result_images[method][q], labels, strict=True)):
                row[1 + i].imshow(_rgb(image))
                row[1 + i].set_title(
                    f"{i + 1}. {label}",
                    fontsize=7,
                    y=-0.28,
                    color="green" if label == query_label else "firebrick",
                )
    fig.suptitle("Example queries and their top results", fontsize=11)
    fig.subplots_adjust(
        left=0.04, right=0.99, top=1 - 0.5 / fig.get_figheight(), hspace=0.55, wspace=0.08
    )
    return _save(fig, path)


def write_examples_report(results: Mapping, out: Path | str) -> dict[str, Path]:
    """The report of queries of several examples (iwan.evaluation.examples): `report.md` (a table
    per metric: methods by number of examples, then by number of negatives), `metrics.csv`,
    `results.json` and `examples.png` (each metric against the number of examples, per method)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    meta = results["metadata"]
    ns, ms = meta["examples"], meta["negatives"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    value = {(r["method"], r["examples"], r["negatives"]): r["metrics"] for r in runs}
    shown = [(metric, k) for metric, k in (("mAP", 20), ("Barz mAHP", 250), ("P", 20))
             if k in runs[0]["metrics"].get(metric, {})]
    figure = plot_examples(methods, ns, ms, value, shown, out / "examples.png")
    lines = [f"# Queries of several examples: {meta['dataset']}", "", "## Setup", "", "| setting | value |",
             "| --- | --- |"]
    lines += [f"| {_cell(key)} | {_cell(v)} |" for key, v in _flatten(meta) if not key.startswith("most_confused")]
    lines.append("")
    if results.get("notes"):
        lines += ["## Findings", ""] + [f"- {note}" for note in results["notes"]] + [""]
    lines += ["Metric values are percentages, averaged over the queries; n is the number of positive examples, "
              "m the number of negative ones.", ""]
    for metric, k in shown:
        lines += [f"## {metric}@{k}", "", "| method | m | " + " | ".join(f"n={n}" for n in ns) + " |",
                  "| --- | ---: |" + " ---: |" * len(ns)]
        for method in methods:
            for m in ms:
                lines.append(f"| {_cell(method)} | {m} | "
                             + " | ".join(_percent(value[(method, n, m)][metric][k]) for n in ns) + " |")
        lines.append("")
    lines += ["## Search time (ms per query, in batches)", "", "| method | m | " + " | ".join(f"n={n}" for n in ns) + " |",
              "| --- | ---: |" + " ---: |" * len(ns)]
    times = {(r["method"], r["examples"], r["negatives"]): r["batch_ms_per_query"] for r in runs}
    for method in methods:
        for m in ms:
            lines.append(f"| {_cell(method)} | {m} | " + " | ".join(f"{times[(method, n, m)]:.3f}" for n in ns) + " |")
    lines.append("")
    confused = meta.get("most_confused_class") or {}
    if confused:
        classes = list(next(iter(confused.values())))
        lines += ["## Most confused class (the negatives' class), by the one-example search", "",
                  "| class | " + " | ".join(_cell(m) for m in confused) + " |", "| --- |" + " --- |" * len(confused)]
        lines += [f"| {_cell(c)} | " + " | ".join(_cell(confused[m][c]) for m in confused) + " |" for c in classes]
        lines.append("")
    lines += ["## Figures", "", f"![metrics against the number of examples]({figure.name})", ""]
    paths = {"report": out / "report.md", "csv": out / "metrics.csv", "json": out / "results.json", "figure": figure}
    paths["report"].write_text("\n".join(lines))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "examples", "negatives", "metric", "k", "value"])
        writer.writerows((r["method"], r["examples"], r["negatives"], metric, k, repr(v))
                         for r in runs for metric, by_k in r["metrics"].items() for k, v in by_k.items())
    _write_json(results, paths["json"])
    return paths


def plot_examples(methods: Sequence[str], ns: Sequence[int], ms: Sequence[int], value: Mapping,
                  shown: Sequence[tuple[str, int]], path: Path | str) -> Path:
    """One panel per (metric, k): the metric against the number of positive examples, a line per
    method (solid without negatives, dashed with the most negatives measured)."""
    fig = Figure(figsize=(4.5 * len(shown), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(shown)))
    colours = {method: f"C{i}" for i, method in enumerate(methods)}
    for ax, (metric, k) in zip(axes, shown, strict=True):
        for method in methods:
            for m, style in ((0, "-"), *(((ms[-1], "--"),) if ms[-1] else ())):
                ax.plot(ns, [value[(method, n, m)][metric][k] for n in ns], style, marker="o", color=colours[method],
                        label=method if m == 0 else f"{method}, {m} negatives")
        ax.set(title=f"{metric}@{k}", xlabel="positive examples (n)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Queries of several examples")
    return _save(fig, path)


def _check_results(results: Mapping) -> None:
    metrics = results.get("metrics") if isinstance(results, Mapping) else None
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(
            'results need a non-empty "metrics" mapping: method -> metric -> k -> value'
        )
    for method, by_metric in metrics.items():
        if not isinstance(by_metric, Mapping) or not by_metric:
            raise ValueError(f"method {method!r} has no metrics: give it metric -> k -> value")
        for metric, by_k in by_metric.items():
            if not isinstance(by_k, Mapping) or not by_k:
                raise ValueError(f"{method!r} / {metric!r} needs a non-empty mapping k -> value")
            for k in by_k:
                if int(k) < 1:
                    raise ValueError(
                        f"{method!r} / {metric!r}: cut-off {k!r} must be a positive int"
                    )
    for method, summary in (results.get("latency") or {}).items():
        missing = [key for key, _ in LATENCY_COLUMNS if key not in summary]
        if missing:
            raise ValueError(f"latency of {method!r} lacks {missing}: use metrics.latency_summary")


def _metric_names(results: Mapping) -> list[str]:
    return list(
        dict.fromkeys(metric for by_metric in results["metrics"].values() for metric in by_metric)
    )


def _write_markdown(results: Mapping, figures: list[tuple[str, Path]], path: Path) -> Path:
    metadata = results.get("metadata") or {}
    title = (
        f"Evaluation report: {metadata['dataset']}"
        if "dataset" in metadata
        else "Evaluation report"
    )
    lines = [f"# {title}", ""]
    if metadata:
        lines += ["## Setup", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in _flatten(metadata)]
        lines.append("")
    if results.get("notes"):
        lines += ["## Findings", ""] + [f"- {note}" for note in results["notes"]] + [""]
    lines += ["Metric values are percentages, averaged over the queries.", ""]
    for metric in _metric_names(results):
        by_method = {m: v[metric] for m, v in results["metrics"].items() if metric in v}
        ks = sorted({int(k) for by_k in by_method.values() for k in by_k})
        lines += [f"## {metric}", "", "| method | " + " | ".join(f"k={k}" for k in ks) + " |"]
        lines.append("| --- |" + " ---: |" * len(ks))
        for method, by_k in by_method.items():
            by_int = {int(k): v for k, v in by_k.items()}
            cells = [_percent(by_int[k]) if k in by_int else "n/a" for k in ks]
            lines.append(f"| {_cell(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    latency = results.get("latency") or {}
    if latency:
        lines += [
            "## Timings",
            "",
            "| method | " + " | ".join(name for _, name in LATENCY_COLUMNS) + " |",
        ]
        lines.append("| --- |" + " ---: |" * len(LATENCY_COLUMNS))
        for method, summary in latency.items():
            lines.append(
                f"| {_cell(method)} | "
                + " | ".join(f"{float(summary[key]):.3f}" for key, _ in LATENCY_COLUMNS)
                + " |"
            )
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{title}]({p.name})\n" for title, p in figures]
    path.write_text("\n".join(lines))
    return path


def _write_csv(results: Mapping, path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "metric", "k", "value"])
        # repr keeps every digit, so the CSV reads back to the same floats.
        writer.writerows((m, metric, k, repr(v)) for m, metric, k, v in metric_rows(results))
    return path


def _write_json(results: Mapping, path: Path) -> Path:
    path.write_text(json.dumps(results, indent=2, default=_json_default))
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(
        f"results hold a {type(value).__name__}, which JSON cannot store: "
        "convert it to a number, string or list"
    )


def _flatten(mapping: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += _flatten(value, f"{name}.")
        else:
            items.append((name, value))
    return items


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * float(value):.2f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "metric"


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"gallery images must be uint8 HxWx3 arrays, got {image.dtype} {image.shape}"
        )
    return image


def _check_length(values: Sequence, reference: Sequence, name: str) -> None:
    if len(values) != len(reference):
        raise ValueError(
            f"{name} has {len(values)} entries but needs {len(reference)}, "
            "one per entry of its axis"
        )


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path
