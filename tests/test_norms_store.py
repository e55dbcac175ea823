"""Loading norms into a real PostgreSQL: counts, replacement, atomicity, lookups, migrations."""

from __future__ import annotations

import shutil

import pytest
import sqlalchemy as sa
from usf_files import (
    APPENDIX_CUES,
    APPENDIX_PAIRS,
    APPENDIX_TARGETS,
    APPENDIX_WORDS,
    HEADER_LINE,
    row,
    write,
    write_appendix,
)

from iwan.datasets.usf import NormsFormatError
from iwan.db import migrate
from iwan.db.norms import (
    UnknownWordError,
    association_arrays,
    load_norms,
    top_targets,
)


def counts(engine) -> dict:
    with engine.connect() as conn:
        return {
            t: conn.scalar(sa.text(f"SELECT count(*) FROM {t}"))
            for t in ("sources", "words", "associations")
        }


def lab_experiment(engine) -> tuple:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT a.normed, a.tcon FROM associations a JOIN words c ON c.id = a.cue_id "
                "JOIN words t ON t.id = a.target_id WHERE c.word = 'LAB' AND t.word = 'EXPERIMENT'"
            )
        ).one()


def test_appendix_load_and_reload(engine, tmp_path):
    folder = write_appendix(tmp_path / "usf-appendix-a")
    summary = load_norms(engine, [folder])
    assert (summary.pairs, summary.cues, summary.targets, summary.words) == (
        APPENDIX_PAIRS, APPENDIX_CUES, APPENDIX_TARGETS, APPENDIX_WORDS
    )
    first = counts(engine)
    assert first == {"sources": 1, "words": APPENDIX_WORDS, "associations": APPENDIX_PAIRS}
    load_norms(engine, [folder])
    assert counts(engine) == first
    assert top_targets(engine, "lab", top=3) == [
        {"target": "EXPERIMENT", "strength": 0.145},
        {"target": "CHEMISTRY", "strength": 0.138},
        {"target": "WORK", "strength": 0.13},
    ]
    assert top_targets(engine, "AARDVARK") == [{"target": "PINK PANTHER", "strength": 0.026}]
    assert lab_experiment(engine) == (True, None)


@pytest.mark.real_data("usf")
def test_real_norms_load_and_reload(engine, shared_data):
    summary = load_norms(engine, [shared_data / "usf-appendix-a"])
    assert (summary.pairs, summary.cues, summary.targets, summary.words) == (72_176, 5_018, 10_469, 10_617)
    first = counts(engine)
    assert first == {"sources": 1, "words": 10_617, "associations": 72_176}
    load_norms(engine, [shared_data / "usf-appendix-a"])
    assert counts(engine) == first
    assert top_targets(engine, "lab", top=3) == [
        {"target": "EXPERIMENT", "strength": 0.145},
        {"target": "CHEMISTRY", "strength": 0.138},
        {"target": "WORK", "strength": 0.13},
    ]
    assert lab_experiment(engine) == (True, None)


def test_broken_file_leaves_database_as_it_was(engine, tmp_path):
    good = write(tmp_path, HEADER_LINE, row(), row(target="WORK", fsg=".13"), name="Cue_Target_Pairs.A")
    load_norms(engine, [good])
    before = counts(engine)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(good, broken / "Cue_Target_Pairs.A")
    write(broken, HEADER_LINE, row(cue="ZOO"), "ZOO, BAD", name="Cue_Target_Pairs.B")
    with pytest.raises(NormsFormatError, match=r"Cue_Target_Pairs.B:6"):
        load_norms(engine, [broken])
    assert counts(engine) == before
    assert [t["target"] for t in top_targets(engine, "LAB")] == ["EXPERIMENT", "WORK"]


def test_duplicate_pair_is_rejected_without_changes(engine, tmp_path):
    path = write(tmp_path, HEADER_LINE, row(), row())
    with pytest.raises(ValueError, match="LAB -> EXPERIMENT appears twice"):
        load_norms(engine, [path])
    assert counts(engine)["associations"] == 0


def test_second_source_loads_beside_the_first(engine, tmp_path):
    load_norms(engine, [write(tmp_path, HEADER_LINE, row())], source="usf")
    other = tmp_path / "other"
    other.mkdir()
    load_norms(engine, [write(other, HEADER_LINE, row(cue="lab", target="coat", fsg=".5"))], source="swow")
    assert counts(engine) == {"sources": 2, "words": 3, "associations": 2}
    assert top_targets(engine, "LAB", source="swow") == [{"target": "coat", "strength": 0.5}]
    assert top_targets(engine, "LAB", source="usf") == [{"target": "EXPERIMENT", "strength": 0.145}]


def test_unknown_word_and_unloaded_source(engine, tmp_path):
    with pytest.raises(LookupError, match="not loaded"):
        top_targets(engine, "LAB")
    load_norms(engine, [write(tmp_path, HEADER_LINE, row())])
    with pytest.raises(UnknownWordError, match="'EXPERIMENT' is not a cue word"):
        top_targets(engine, "EXPERIMENT")


def test_association_arrays(engine, tmp_path):
    load_norms(engine, [write(tmp_path, HEADER_LINE, row(), row(target="WORK", fsg=".13", bsg="¥"))])
    arrays = association_arrays(engine)
    assert sorted(arrays.words) == ["EXPERIMENT", "LAB", "WORK"]
    pairs = {(arrays.words[c], arrays.words[t]): (f, b) for c, t, f, b in zip(arrays.cue, arrays.target, arrays.forward, arrays.backward)}
    assert pairs[("LAB", "EXPERIMENT")] == pytest.approx((0.145, 0.157))
    f, b = pairs[("LAB", "WORK")]
    assert f == pytest.approx(0.13) and b != b  # NaN for a missing BSG


def test_migrations_down_and_up(engine):
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    migrate.downgrade(engine, "base")
    with engine.connect() as conn:
        assert not (set(sa.inspect(conn).get_table_names()) - {"alembic_version"})
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert {"sources", "words", "associations", "images", "predictions", "hash_codes"} <= set(
            sa.inspect(conn).get_table_names()
        )

