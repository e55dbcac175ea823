"""`iwan evaluate --examples`: queries of n same-class examples (and m negatives of the most
confused class) on a real database whose answers are known (test_evaluate's toy: 6 train and 2
test images per class, each image's top word its class's, embeddings on the class embeddings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_evaluate import spec, toy_database  # noqa: F401  (the fixture)

from iwan.evaluation.examples import draw_negatives, draw_positives, example_queries, most_confused, run_examples
from iwan.evaluation.runs import build_methods, run, workload

KS = (1, 5, 20)
LABELS = "IWAN", "exhaustive cosine", "hashes (cosine in cells)", "fused (weighted)"


def test_positives_are_the_query_and_others_of_its_class_nested_and_padded():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    drawn = draw_positives(labels, 4, seed=3)
    assert (drawn[:, 0] == np.arange(8)).all()
    for r, row in enumerate(drawn):
        found = row[row >= 0]
        assert len(set(found.tolist())) == len(found) and (labels[found] == labels[r]).all()
        assert len(found) == min(4, (labels == labels[r]).sum())  # class 1 gives 2, class 2 only itself
    assert (drawn == draw_positives(labels, 4, seed=3)).all()
    assert (draw_positives(labels, 2, seed=3) == drawn[:, :2]).all()  # n = 2's examples are among n = 4's
    assert not (draw_positives(labels, 4, seed=4) == drawn).all()


def test_the_most_confused_class_is_the_wrong_one_ranked_most_and_negatives_come_from_it():
    query_labels = np.array([0, 0, 1, 2])
    retrieved = np.array([[0, 2, 2, 1], [1, 2, -1, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    # Class 0's rankings hold class 2 three times, class 1 twice; class 1's no wrong label; class
    # 2's classes 0 and 1 twice each (a tie: the lower); class 3 has no query.
    assert most_confused(retrieved, query_labels, 4).tolist() == [2, -1, 0, -1]
    labels = np.array([0, 0, 1, 1, 1, 2])
    negatives = draw_negatives(labels, np.array([1, 1, -1, 2, 0, 1]), 3, seed=0)
    assert (labels[negatives[0]] == 1).all() and (negatives[2] == -1).all()
    assert negatives[3].tolist()[1:] == [-1, -1] and labels[negatives[3][0]] == 2
    assert (draw_negatives(labels, np.array([1, 1, -1, 2, 0, 1]), 2, seed=0) == negatives[:, :2]).all()


def test_batched_example_searches_rank_as_each_search_request_does(toy_database):  # noqa: F811
    evaluation = spec(query_split="train", ks=KS, fusion="rrf")  # no corpus image is left to validate a weight
    work = workload(toy_database, evaluation)
    methods, _ = build_methods(toy_database, evaluation, work)
    queries = methods.queries(work.queries.ids)
    labels = work.queries.fine_labels
    positives = draw_positives(labels, 3, seed=0)
    negatives = draw_negatives(labels, (labels + 1) % 10, 2, seed=1)
    negatives[::3] = -1  # some queries without negatives
    asked = example_queries(queries, positives, negatives)
    rows = np.hstack([positives, negatives])
    exclude = np.where(rows >= 0, work.queries.ids[np.maximum(rows, 0)], -1)
    for name in evaluation.methods:
        retriever = methods.retrievers[name]
        scores, ids = retriever.search_examples(asked, 20, exclude=exclude)
        for r, examples in enumerate(asked):
            found = retriever.explain_examples(examples, 20, exclude=exclude[r][exclude[r] >= 0])
            assert found.ids[0].tolist() == ids[r].tolist(), (name, r)
            assert np.array_equal(found.scores[0], scores[r]), (name, r)
            assert not set(exclude[r].tolist()) & set(ids[r].tolist())


def test_one_example_scores_as_the_one_image_evaluation(toy_database, tmp_path):  # noqa: F811
    evaluation = spec(ks=KS)
    plain = run(toy_database, evaluation, tmp_path / "plain", progress=False)
    measured = run_examples(toy_database, evaluation, tmp_path / "examples", [3], [1], progress=False)
    ones = {r["method"]: r["metrics"] for r in measured["runs"] if r["examples"] == 1 and r["negatives"] == 0}
    assert set(ones) == set(LABELS)
    for method in LABELS:
        for metric in ("mAP", "Barz mAHP", "P"):
            assert ones[method][metric] == pytest.approx(plain["metrics"][method][metric], abs=1e-12), (method, metric)
    # 2 test images per class: a query of 3 examples gets the 2 its class has, for all 20 queries.
    assert measured["metadata"]["queries_with_fewer_examples"] == {"1": 0, "3": 20}
    assert len(measured["runs"]) == len(LABELS) * 2 * 2
    assert len(measured["metadata"]["most_confused_class"]["IWAN"]) == 10
    saved = json.loads((tmp_path / "examples" / "results.json").read_text())
    assert saved["metadata"]["examples"] == [1, 3] and saved["metadata"]["negatives"] == [0, 1]
    report = (tmp_path / "examples" / "report.md").read_text()
    assert "## mAP@20" in report and "| IWAN | 1 |" in report
    assert (tmp_path / "examples" / "examples.png").stat().st_size > 10_000
    # A rerun resumes from the cached rankings: the same figures, timings included.
    assert len(list((tmp_path / "examples" / "cache").glob("*.npz"))) == len(measured["runs"])
    again = run_examples(toy_database, evaluation, tmp_path / "examples", [3], [1], progress=False)
    assert again["runs"] == measured["runs"]


def test_examples_the_corpus_holds_are_no_hits_and_not_relevant(toy_database, tmp_path):  # noqa: F811
    # The original protocol: every example is a corpus image. The exhaustive search ranks each
    # class's 6 images first (all on the class embedding); with 3 of them the examples, the 3
    # others must fill ranks 1-3 and R must be 3: P@5 is 3/5 and mAP@5 exactly 1.
    evaluation = spec(query_split="train", methods=("exhaustive",), ks=KS)
    measured = run_examples(toy_database, evaluation, tmp_path, [3], progress=False)
    three = next(r["metrics"] for r in measured["runs"] if r["examples"] == 3)
    assert three["P"][5] == pytest.approx(3 / 5)
    assert three["mAP"][5] == pytest.approx(1.0)
    # And the ideal ranking of hierarchical precision lacks them too: this one is ideal, (k - 1) / k.
    assert three["Barz mAHP"][20] == pytest.approx(19 / 20)
    assert measured["metadata"]["queries_with_fewer_examples"] == {"1": 0, "3": 0}


def test_the_cli_measures_examples_and_refuses_negatives_alone(toy_database, database_url, tmp_path, monkeypatch):  # noqa: F811
    from iwan.cli import cli as main

    monkeypatch.setenv("IWAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IWAN_DATABASE_URL", database_url)
    out = tmp_path / "report"
    args = ["evaluate", "--dataset", "toy10", "--methods", "iwan,hashes", "--predictor", "toy-classifier",
            "--hash-model", "toy-hash", "--hierarchy", str(spec().hierarchy), "--k", "1,5,20", "--no-gallery",
            "--out", str(out)]
    refused = CliRunner().invoke(main, [*args, "--negatives", "1"])
    assert refused.exit_code == 2 and "--negatives needs --examples" in refused.output
    done = CliRunner().invoke(main, [*args, "--examples", "2", "--negatives", "1", "--json"])
    assert done.exit_code == 0, done.output
    answer = json.loads(done.output)
    assert {(r["method"], r["examples"], r["negatives"]) for r in answer["runs"]} == {
        (m, n, k) for m in ("IWAN", "hashes (cosine in cells)") for n in (1, 2) for k in (0, 1)}
    assert (out / "metrics.csv").read_text().startswith("method,examples,negatives,metric,k,value")


def test_the_cli_names_a_local_cifar100_copy_as_its_loader_registers_it():
    # `--examples` reads the store only, by the data set's registered name: a copy of CIFAR-100
    # at a path is registered as cifar100 (`iwan predict --dataset cifar100:PATH`).
    from iwan.datasets.loaders import registered_name

    assert registered_name("cifar100:/data/cifar100-train-sample") == "cifar100"
    assert registered_name("cifar10") == "cifar10"
