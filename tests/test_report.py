"""The report writes every file, and its tables and data files carry the numbers given."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from iwan.evaluation import report


def sample_results():
    return {
        "metadata": {
            "dataset": "CIFAR-100",
            "corpus_size": 50000,
            "query_size": 10000,
            "predictor": "resnet50",
            "settings": {"top_iwk": 4, "top_wwk": 4},
        },
        "metrics": {
            "IWAN": {
                "mAP": {1: 0.6125, 20: 0.5123, 250: 0.3},
                "mHP": {1: 0.8, 20: 0.7111, 250: 0.6},
            },
            "hash+RRF": {"mAP": {1: 0.55, 20: 0.4567, 250: 0.25}, "mHP": {1: 0.75, 20: 0.6543}},
        },
        "latency": {
            "IWAN": {"median_ms": 1.25, "p95_ms": 4.5, "throughput_qps": 480.0},
            "hash+RRF": {"median_ms": 0.5, "p95_ms": 0.75, "throughput_qps": 1500.0},
        },
        "sweep": {
            "top_iwk": list(range(1, 11)),
            "metrics": {
                "mAP@20": list(np.linspace(0.3, 0.5, 10)),
                "mHP@20": list(np.linspace(0.6, 0.7, 10)),
            },
            "median_ms": {"IWAN": list(np.linspace(0.5, 3.0, 10))},
        },
        "settings_scatter": {
            "k": 20,
            "labels": ["iwk=1", "iwk=4", "iwk=10"],
            "mAP": [0.3, 0.5, 0.45],
            "mHP": [0.6, 0.71, 0.7],
        },
    }


def sample_gallery():
    rng = np.random.default_rng(0)

    def images(n):
        return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]

    return report.Gallery(
        query_images=images(2),
        query_labels=["apple", "bus"],
        result_images={"IWAN": [images(10), images(10)], "hash+RRF": [images(10), images(10)]},
        result_labels={
            "IWAN": [["apple"] * 6 + ["pear"] * 4, ["bus"] * 10],
            "hash+RRF": [["pear"] * 10, ["bus", "train"] * 5],
        },
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, report.write_report(sample_results(), out, gallery=sample_gallery())


def test_all_files_are_written(written):
    out, files = written
    expected = {
        "report.md",
        "metrics.csv",
        "results.json",
        "curve_mAP.png",
        "curve_mHP.png",
        "sweep_top_iwk.png",
        "time_top_iwk.png",
        "settings_scatter.png",
        "gallery.png",
    }
    assert set(files) == expected
    assert {p.name for p in out.iterdir()} == expected


def test_figures_are_real_images(written):
    _, files = written
    for name, path in files.items():
        if not name.endswith(".png"):
            continue
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300, name
        assert pixels.std() > 10, f"{name} is almost blank"
        assert path.stat().st_size > 10_000, name


def test_csv_round_trips_the_numbers(written):
    out, _ = written
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    read = {(r["method"], r["metric"], int(r["k"])): float(r["value"]) for r in rows}
    given = {
        (method, metric, k): value
        for method, by_metric in sample_results()["metrics"].items()
        for metric, by_k in by_metric.items()
        for k, value in by_k.items()
    }
    assert read == given
    assert len(rows) == 11


def test_json_round_trips_the_results(written):
    out, _ = written
    loaded = report.load_results(out / "results.json")
    given = json.loads(json.dumps(sample_results()))
    given["metrics"] = sample_results()["metrics"]
    assert loaded == given


def test_markdown_has_one_table_per_metric_and_the_timings(written):
    out, _ = written
    text = (out / "report.md").read_text()
    assert "# Evaluation report: CIFAR-100" in text
    assert "| settings.top_iwk | 4 |" in text
    assert "## mAP\n\n| method | k=1 | k=20 | k=250 |" in text
    assert "| IWAN | 61.25 | 51.23 | 30.00 |" in text
    assert "| hash+RRF | 75.00 | 65.43 | n/a |" in text  # mHP has no k=250 for this method
    assert "| IWAN | 1.250 | 4.500 | 480.000 |" in text
    assert "![Example queries](gallery.png)" in text


def test_bad_results_are_rejected(tmp_path):
    with pytest.raises(ValueError, match='"metrics"'):
        report.write_report({"metadata": {}}, tmp_path)
    with pytest.raises(ValueError, match="latency_summary"):
        report.write_report(
            {"metrics": {"a": {"mAP": {1: 0.5}}}, "latency": {"a": {"p95_ms": 1}}}, tmp_path
        )
