"""Norm sets in PostgreSQL: bulk load (one transaction, COPY), lookup, association arrays."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.datasets.usf import COLUMNS, FIELDS, UsfRow, checksum, expand_paths, parse_file
from iwan.network.graph import Associations

if TYPE_CHECKING:
    import psycopg

NORMS_LOCK = 0x1A7A_0002
"""pg_advisory_xact_lock key held while a norm set is replaced."""
_SQL_TYPES = {"bool": "boolean", "int": "integer", "real": "real", "text": "text"}


class UnknownWordError(LookupError):
    """A word that is not a cue of the norm set."""


@dataclass(frozen=True)
class LoadSummary:
    source: str
    pairs: int
    cues: int
    targets: int
    words: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def load_norms(
    engine: Engine,
    paths: Iterable[Path],
    source: str = "usf",
    citation: str | None = None,
) -> LoadSummary:
    """Parse the files, then replace `source` in one transaction; a bad file changes nothing."""
    started = time.perf_counter()
    files = expand_paths(paths)
    rows = [row for path in files for row in parse_file(path)]
    _check_unique_pairs(rows, files)
    staging_columns = ", ".join(f"{c.field} {_SQL_TYPES[c.kind]}" for c in COLUMNS)
    with engine.begin() as conn:
        # Two loads at once would both insert the source (a unique violation): the second waits
        # for the first to commit, then replaces what it loaded.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": NORMS_LOCK})
        conn.execute(sa.text("DELETE FROM sources WHERE name = :name"), {"name": source})
        source_id = conn.scalar(
            sa.text(
                "INSERT INTO sources (name, citation, checksum, n_files) "
                "VALUES (:name, :citation, :checksum, :n_files) RETURNING id"
            ),
            {"name": source, "citation": citation, "checksum": checksum(files), "n_files": len(files)},
        )
        conn.execute(sa.text(f"CREATE TEMP TABLE staging ({staging_columns}) ON COMMIT DROP"))
        # An open connection of the psycopg dialect always holds its DBAPI connection (None only once closed).
        driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
        cursor = driver.cursor()
        with cursor.copy(f"COPY staging ({', '.join(FIELDS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(
            sa.text(
                "INSERT INTO words (word) "
                "SELECT DISTINCT ON (lower(w)) w FROM "
                "(SELECT cue AS w FROM staging UNION ALL SELECT target FROM staging) AS s "
                "ORDER BY lower(w), w "
                "ON CONFLICT ((lower(word))) DO NOTHING"
            )
        )
        value_columns = ", ".join(f"s.{f}" for f in FIELDS[2:])
        conn.execute(
            sa.text(
                f"INSERT INTO associations (source_id, cue_id, target_id, {', '.join(FIELDS[2:])}) "
                f"SELECT :source_id, cw.id, tw.id, {value_columns} FROM staging s "
                "JOIN words cw ON lower(cw.word) = lower(s.cue) "
                "JOIN words tw ON lower(tw.word) = lower(s.target)"
            ),
            {"source_id": source_id},
        )
    cues = {row.cue.lower() for row in rows}
    targets = {row.target.lower() for row in rows}
    return LoadSummary(
        source=source,
        pairs=len(rows),
        cues=len(cues),
        targets=len(targets),
        words=len(cues | targets),
        seconds=round(time.perf_counter() - started, 3),
    )


def _check_unique_pairs(rows: Sequence[UsfRow], files: Sequence[Path]) -> None:
    seen: set[tuple[str, str]] = set()
    for row in rows:
        pair = (row.cue.lower(), row.target.lower())
        if pair in seen:
            raise ValueError(
                f"cue-target pair {row.cue} -> {row.target} appears twice in "
                f"{', '.join(map(str, files))}: remove the duplicate row"
            )
        seen.add(pair)


def source_id(conn: sa.Connection, source: str) -> int:
    found = conn.scalar(sa.text("SELECT id FROM sources WHERE name = :n"), {"n": source})
    if found is None:
        raise LookupError(f"norm set {source!r} is not loaded: run `iwan norms load` first")
    return found


def top_targets(engine: Engine, word: str, source: str = "usf", top: int | None = None) -> list[dict]:
    """The cue's targets by forward strength, strongest first (case-insensitive cue)."""
    with engine.connect() as conn:
        sid = source_id(conn, source)
        cue = conn.execute(
            sa.text("SELECT id, word FROM words WHERE lower(word) = lower(:w)"), {"w": word}
        ).first()
        rows: Sequence[Sequence[Any]] = []  # result rows (target, fsg)
        if cue is not None:
            rows = conn.execute(
                sa.text(
                    "SELECT w.word, a.fsg FROM associations a JOIN words w ON w.id = a.target_id "
                    "WHERE a.source_id = :sid AND a.cue_id = :cue AND a.fsg IS NOT NULL "
                    "ORDER BY a.fsg DESC, w.word LIMIT :top"
                ),
                {"sid": sid, "cue": cue.id, "top": top},
            ).all()
    if not rows:
        raise UnknownWordError(f"{word!r} is not a cue word of the {source!r} norms")
    return [{"target": target, "strength": round(float(strength), 6)} for target, strength in rows]


def association_arrays(engine: Engine, source: str = "usf") -> Associations:
    """Every pair of the norm set as arrays over the vocabulary of the words they use."""
    with engine.connect() as conn:
        sid = source_id(conn, source)
        pairs = conn.execute(
            sa.text(
                "SELECT cue_id, target_id, fsg, bsg FROM associations WHERE source_id = :sid "
                "ORDER BY cue_id, fsg DESC NULLS LAST, target_id"
            ),
            {"sid": sid},
        ).all()
        used = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
        names: dict[int, str] = dict(
            conn.execute(sa.text("SELECT id, word FROM words WHERE id = ANY(:ids)"), {"ids": used}).all()
        )
    position = {word_id: i for i, word_id in enumerate(used)}
    table = np.array(
        [(position[c], position[t], np.nan if f is None else f, np.nan if b is None else b) for c, t, f, b in pairs],
        dtype=np.float64,
    ).reshape(-1, 4)
    return Associations(
        words=[names[i] for i in used],
        cue=table[:, 0].astype(np.int32),
        target=table[:, 1].astype(np.int32),
        forward=table[:, 2],
        backward=table[:, 3],
    )


def loaded_sources(conn: sa.Connection) -> list[dict]:
    """Each loaded norm set: name, checksum, loaded_at."""
    rows = conn.execute(sa.text("SELECT name, checksum, loaded_at FROM sources ORDER BY name"))
    return [dict(r._mapping) for r in rows]
