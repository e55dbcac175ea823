"""The one search pipeline: the HTTP service, `iwan search --collection` and the Python API give the
same result document for the same query; an image query is decoded and encoded once and a fused
search searches each member once; an image given as a file is in its own results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from livedata import png
from serving import make_collection

import iwan
from iwan.config import settings
from iwan.serve import create_app
from iwan.vision.decode import UPLOAD_FORMATS, DecodePolicy

METHODS = ("iwan", "exhaustive", "hashes", "fused")


@pytest.fixture
def live(engine, database_url, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("IWAN_HOME", str(home))
    monkeypatch.setenv("IWAN_DATABASE_URL", database_url)
    collection = make_collection(engine, home, "pics", [(f"img{i}.png", png(i)) for i in range(10)], label="blob")
    yield collection
    collection.close()


@pytest.fixture
def cli(live, monkeypatch):
    """`iwan search --collection` in this process, its collection encoding with the tiny predictor
    the served collection uses (load_predictor is what the CLI's encoder calls)."""
    import livedata

    tiny = livedata.tiny_predictor()
    monkeypatch.setattr("iwan.vision.predictors.load_predictor", lambda *args, **kwargs: tiny)

    def run(*args: str) -> dict:
        from iwan.cli import cli as group

        result = CliRunner().invoke(group, ["search", "--collection", "pics", *args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    return run


def without_timing(document: dict) -> dict:
    return {key: value for key, value in document.items() if key != "timing_ms"}


@pytest.mark.parametrize("method", METHODS)
def test_http_cli_and_python_answer_an_image_query_alike(live, cli, tmp_path, method):
    query = png(500)
    (tmp_path / "query.png").write_bytes(query)
    with TestClient(create_app(live.engine, [live], settings=settings())) as client:
        answer = client.post("/v1/collections/pics/search", files={"image": ("query.png", query, "image/png")},
                             params={"method": method, "k": 6})
    assert answer.status_code == 200, answer.text
    http = without_timing(answer.json())
    policy = DecodePolicy(max_pixels=settings().max_image_pixels, formats=UPLOAD_FORMATS)
    api = without_timing(iwan.search(live, iwan.SearchRequest(image=query, method=method, k=6), policy).as_dict())
    assert http == api
    assert without_timing(cli("--image", str(tmp_path / "query.png"), "--method", method, "--k", "6")) == http
    assert len(http["results"]) == 6 and http["method"] == method
    # Every hit is explained in the method's own terms.
    for hit in http["results"]:
        why = hit["explanation"]
        if method == "iwan":
            assert why["path"][-1] == f"image {hit['image_id']}" and why["distance"] == pytest.approx(-hit["score"])
        elif method in ("hashes", "exhaustive"):
            assert why["cosine"] == pytest.approx(hit["score"]) and 0 <= why["hamming"] <= 48
        else:
            assert set(why["ranks"]) == {"iwan", "hashes"}


def test_http_cli_and_python_answer_text_and_stored_image_queries_alike(live, cli):
    word = live.words[int(live.stored_queries(live.image_ids[:1]).word_ids[0, 0])]
    stored = int(live.image_ids[3])
    with TestClient(create_app(live.engine, [live], settings=settings())) as client:
        by_text = client.post("/v1/collections/pics/search", json={"text": f"{word}:0.9,zzqx", "k": 5})
        by_id = client.post("/v1/collections/pics/search", json={"image_id": stored, "k": 5, "offset": 2})
    assert by_text.status_code == by_id.status_code == 200
    assert without_timing(cli("--words", f"{word}:0.9,zzqx", "--k", "5")) == without_timing(by_text.json())
    assert by_text.json()["query"]["unknown"] == ["zzqx"] and by_text.json()["method"] == "iwan"
    assert without_timing(cli("--image-id", str(stored), "--k", "5", "--offset", "2")) == without_timing(by_id.json())
    ranks = [hit["rank"] for hit in by_id.json()["results"]]
    assert ranks == [3, 4, 5, 6, 7] and stored not in [hit["image_id"] for hit in by_id.json()["results"]]


def test_an_image_query_is_encoded_once_and_a_fused_search_searches_each_member_once(live, monkeypatch):
    calls = {"encode": 0, "iwan": 0, "hashes": 0, "exhaustive": 0}
    encode = live.encoder.encode
    monkeypatch.setattr(live.encoder, "encode", lambda images, budget=None: calls.__setitem__("encode", calls["encode"] + 1) or encode(images, budget))
    for name in ("iwan", "hashes", "exhaustive"):
        index = live.retrievers[name].index  # the structure each method searches

        def counted(*args, _name=name, _search=index.search, **kwargs):
            calls[_name] += 1
            return _search(*args, **kwargs)

        monkeypatch.setattr(index, "search", counted)
    result = iwan.search(live, iwan.SearchRequest(image=png(501), method="fused", k=5))
    assert calls == {"encode": 1, "iwan": 1, "hashes": 1, "exhaustive": 0}
    # The reasons come from those searches: a hit IWAN ranked carries IWAN's path, one the hash
    # search ranked its Hamming distance.
    for hit in result.hits:
        ranks = hit.explanation["ranks"]
        assert ("path" in hit.explanation) == (ranks["iwan"] is not None)
        assert ("hamming" in hit.explanation) == (ranks["hashes"] is not None)


def test_an_image_given_as_a_file_is_in_its_own_results(live, cli, tmp_path):
    stored = live.image_ids[4]
    (tmp_path / "same.png").write_bytes(png(4))  # the bytes of img4.png
    found = cli("--image", str(tmp_path / "same.png"), "--method", "hashes", "--k", "3")
    assert found["results"][0]["image_id"] == int(stored)
    assert found["results"][0]["explanation"] == {"hamming": 0, "cosine": pytest.approx(1.0, abs=1e-5), "example": 0}


def test_a_request_that_breaks_the_rules_is_a_value_error(live):
    with pytest.raises(ValueError, match="exactly one query"):
        iwan.SearchRequest(text="cat", image_id=3)
    with pytest.raises(ValueError, match="k=0 must be"):
        iwan.SearchRequest(text="cat", k=0)
    with pytest.raises(ValueError, match="control characters"):
        iwan.SearchRequest(text="cat\x00")
    with pytest.raises(ValueError, match="needs an image query"):
        iwan.search(live, iwan.SearchRequest(text="cat", method="hashes"))
    with pytest.raises(ValueError, match="not available in 'pics'"):
        iwan.search(live, iwan.SearchRequest(text="cat", method="bm25"))
    with pytest.raises(LookupError, match="holds no image 999999"):
        iwan.search(live, iwan.SearchRequest(image_id=999_999))
    with pytest.raises(iwan.ImageRefused, match="not an image this service reads") as refused:
        iwan.search(live, iwan.SearchRequest(image=b"not an image"))
    assert refused.value.status == 415
    assert np.array_equal(live.image_ids, np.sort(live.image_ids))
