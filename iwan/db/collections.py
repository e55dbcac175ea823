"""Collections in PostgreSQL: the SQL of the collections, collection_images, image_files and
collection_changes tables.

A collection is a named set of images (a data set split, or an empty start) with the word
predictor and the optional hash model that represent them. Every change to its membership is a
row of the change log, numbered by `seq` and announced with NOTIFY (iwan.db.changes), written in the
same transaction as the change itself. Changes to one collection are serialised by a lock on its
row, so their sequence numbers and image ids grow in commit order: a process that has applied
change s has seen every earlier change of that collection.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.config import DEFAULT_STRENGTH, DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, MAX_TOP_IWK, USF_SOURCE
from iwan.db import binary

if TYPE_CHECKING:
    import psycopg

CHANNEL = "iwan_changes"
"""The NOTIFY channel; the payload is "<collection id>:<seq>"."""
UPLOAD_DATASET = "upload"
"""The `images.dataset` of uploaded images (split "upload", position = id, fine_label -1)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    dataset: str | None
    split: str | None
    predictor: str
    hash_model: str | None
    top_iwk: int
    top_wwk: int
    strength: str
    source: str
    created_at: datetime

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    seq: int
    op: str
    """"add" or "remove"."""
    image_ids: np.ndarray


_COLUMNS = "id, name, dataset, split, predictor, hash_model, top_iwk, top_wwk, strength, source, created_at"


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise ValueError(
            f"collection name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def create(
    engine: Engine,
    name: str,
    predictor: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    hash_model: str | None = None,
    top_iwk: int = DEFAULT_TOP_IWK,
    top_wwk: int = DEFAULT_TOP_WWK,
    strength: str = DEFAULT_STRENGTH,
    source: str = USF_SOURCE,
) -> Collection:
    """A new collection: every registered image of `dataset`/`split`, or none.

    The split's images must have predictions of `predictor` (and codes of `hash_model`), since
    the collection's indexes are built from them."""
    check_name(name)
    if (dataset is None) != (split is None):
        raise ValueError("a collection from a data set needs both --dataset and --split (or neither, to start empty)")
    if not 1 <= top_iwk <= MAX_TOP_IWK:
        raise ValueError(f"top_iwk={top_iwk} must be 1..{MAX_TOP_IWK}")
    with engine.begin() as conn:
        if conn.scalar(sa.text("SELECT 1 FROM collections WHERE name = :n"), {"n": name}):
            raise ValueError(f"collection {name!r} already exists: choose another name, or `iwan collection drop {name}` first")
        if dataset is not None and split is not None:  # both or neither, checked above
            _check_split(conn, dataset, split, predictor, hash_model)
        row = conn.execute(
            sa.text(
                "INSERT INTO collections (name, dataset, split, predictor, hash_model, top_iwk, top_wwk, strength, source) "
                f"VALUES (:n, :d, :s, :p, :h, :ti, :tw, :st, :so) RETURNING {_COLUMNS}"
            ),
            {"n": name, "d": dataset, "s": split, "p": predictor, "h": hash_model, "ti": top_iwk, "tw": top_wwk,
             "st": strength, "so": source},
        ).one()
        if dataset is not None:
            conn.execute(
                sa.text(
                    "INSERT INTO collection_images (collection_id, image_id) "
                    "SELECT :c, id FROM images WHERE dataset = :d AND split = :s"
                ),
                {"c": row.id, "d": dataset, "s": split},
            )
    return Collection(*row)


def _check_split(conn: sa.Connection, dataset: str, split: str, predictor: str, hash_model: str | None) -> None:
    counts = conn.execute(
        sa.text(
            "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.model = :p "
            "AND p.image_id = i.id)), count(*) FILTER (WHERE CAST(:h AS text) IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM hash_codes c WHERE c.model = :h AND c.image_id = i.id)) "
            "FROM images i WHERE i.dataset = :d AND i.split = :s"
        ),
        {"d": dataset, "s": split, "p": predictor, "h": hash_model},
    ).one()
    images, unpredicted, unencoded = counts
    if not images:
        raise LookupError(f"no images of {dataset}/{split} are registered: run `iwan predict --dataset {dataset} --split {split}` first")
    if unpredicted:
        raise LookupError(
            f"{unpredicted:,} of the {images:,} images of {dataset}/{split} have no {predictor} predictions: "
            f"run `iwan predict --dataset {dataset} --split {split} --model {predictor}`"
        )
    if unencoded:
        raise LookupError(
            f"{unencoded:,} of the {images:,} images of {dataset}/{split} have no codes of hash model {hash_model!r}: "
            f"run `iwan hash encode --dataset {dataset} --split {split} --name {hash_model}`"
        )


def get(engine_or_conn, name: str) -> Collection:
    """The collection called `name`; LookupError naming it otherwise."""
    with _connection(engine_or_conn) as conn:
        row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM collections WHERE name = :n"), {"n": name}).first()
    if row is None:
        raise LookupError(f"unknown collection {name!r}: see `iwan collection list`, or create it with `iwan collection create`")
    return Collection(*row)


def all_collections(engine: Engine) -> list[tuple[Collection, int]]:
    """Every collection with its size, by name."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT {', '.join('c.' + c for c in _COLUMNS.split(', '))}, "
                "(SELECT count(*) FROM collection_images m WHERE m.collection_id = c.id) "
                "FROM collections c ORDER BY c.name"
            )
        ).all()
    return [(Collection(*row[:-1]), int(row[-1])) for row in rows]


def size(engine: Engine, collection_id: int) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM collection_images WHERE collection_id = :c"), {"c": collection_id})


def drop(engine: Engine, name: str) -> list[str]:
    """Delete a collection, its memberships, change log and uploaded images; the sha256 of the
    files they used (see `unreferenced` for which may go)."""
    with engine.begin() as conn:
        collection = get(conn, name)
        shas = conn.scalars(
            sa.text("SELECT DISTINCT sha256 FROM image_files WHERE collection_id = :c"), {"c": collection.id}
        ).all()
        conn.execute(
            sa.text("DELETE FROM images WHERE id IN (SELECT image_id FROM image_files WHERE collection_id = :c)"),
            {"c": collection.id},
        )
        conn.execute(sa.text("DELETE FROM collections WHERE id = :c"), {"c": collection.id})
        return list(shas)


def lock_files(conn: sa.Connection, shas, shared: bool) -> None:
    """Transaction-scoped advisory locks on files by sha256: adders share them from before they
    write a file until their rows commit; a remover takes them alone before deciding a file is unused."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(
        sa.text(f"SELECT {function}(k) FROM unnest(CAST(:keys AS bigint[])) AS t(k) ORDER BY k"),
        {"keys": sorted({int(sha[:15], 16) for sha in shas})},
    )


def unreferenced(conn: sa.Connection, shas) -> list[str]:
    """Those of the sha256 no uploaded image refers to."""
    still = set(conn.scalars(sa.text("SELECT sha256 FROM image_files WHERE sha256 = ANY(:s)"), {"s": list(shas)}).all())
    return [s for s in shas if s not in still]


# --- membership and the data of members -------------------------------------------------------------


def member_ids(conn: sa.Connection, collection_id: int, among: np.ndarray | None = None) -> np.ndarray:
    """Ascending ids of the collection's images (only those in `among`, if given)."""
    ids = conn.scalars(
        sa.text(
            "SELECT image_id FROM collection_images WHERE collection_id = :c "
            "AND (CAST(:among AS bigint[]) IS NULL OR image_id = ANY(:among)) ORDER BY image_id"
        ),
        {"c": collection_id, "among": None if among is None else np.asarray(among).tolist()},
    ).all()
    return np.asarray(ids, dtype=np.int64)


def labels_of(conn: sa.Connection, image_ids: np.ndarray) -> list[str | None]:
    """Each image's label, in the order of `image_ids`: the one given at upload, else its data set
    class name; None for neither."""
    rows = conn.execute(
        sa.text(
            "SELECT i.id, coalesce(f.label, c.name) FROM images i LEFT JOIN image_files f ON f.image_id = i.id "
            "LEFT JOIN dataset_classes c ON c.dataset = i.dataset AND c.granularity = 'fine' AND c.label = i.fine_label "
            "WHERE i.id = ANY(:ids)"
        ),
        {"ids": np.asarray(image_ids).tolist()},
    ).all()
    found: dict[int, str | None] = dict(rows)
    return [found.get(int(i)) for i in image_ids]


MEMBER_PAGE = ("WITH page AS MATERIALIZED (SELECT image_id FROM collection_images WHERE collection_id = %(c)s "
               "AND image_id > %(after)s ORDER BY image_id LIMIT %(rows)s) ")
"""A page of a collection's members, ids ascending, for iwan.db.binary.iter_pages: the common
table `page` of the ids above %(after)s, at most %(rows)s of them (collection %(c)s)."""


def member_labels(conn: sa.Connection, collection_id: int, page_rows: int = 1 << 18) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids ascending, label codes, label names) of every image of a collection, as `labels_of`
    defines labels: code i is names[i], -1 none. Read a page at a time as binary arrays
    (iwan.db.binary.iter_pages), so that 10M members cost two arrays and the distinct names, not a
    Python string per image."""
    label = ("coalesce(f.label, d.name) FROM {members} JOIN images i ON i.id = m.image_id "
             "LEFT JOIN image_files f ON f.image_id = i.id LEFT JOIN dataset_classes d ON d.dataset = i.dataset "
             "AND d.granularity = 'fine' AND d.label = i.fine_label")
    driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
    distinct = f"SELECT DISTINCT {label.format(members='collection_images m')} WHERE m.collection_id = %(c)s"
    names = sorted(row[0] for row in driver.execute(distinct, {"c": collection_id}) if row[0] is not None)
    query = (f"{MEMBER_PAGE}SELECT array_send(array_agg(m.image_id ORDER BY m.image_id)), array_send(array_agg("
             f"CAST(coalesce(n.ord - 1, -1) AS integer) ORDER BY m.image_id)) FROM (SELECT m.image_id, "
             f"{label.format(members='page m')}) AS m(image_id, label) LEFT JOIN unnest(CAST(%(names)s AS text[])) "
             "WITH ORDINALITY AS n(name, ord) ON n.name = m.label")
    pages = list(binary.iter_pages(conn, query, {"c": collection_id, "names": names}, page_rows))
    if not pages:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), names
    return (np.concatenate([ids for ids, _ in pages]),
            np.concatenate([binary.parse_array(codes, "int4") for _, codes in pages]).astype(np.int32), names)


# --- changes ------------------------------------------------------------------------------------


def lock(conn: sa.Connection, name: str) -> Collection:
    """Take the collection's row lock for this transaction (serialises its changes)."""
    row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM collections WHERE name = :n FOR NO KEY UPDATE"), {"n": name}).first()
    if row is None:
        raise LookupError(f"unknown collection {name!r}: see `iwan collection list`")
    return Collection(*row)


def log_change(conn: sa.Connection, collection_id: int, op: str, image_ids: np.ndarray) -> int:
    """Append a change (inside the change's own transaction) and announce it at commit; its seq."""
    seq = conn.scalar(
        sa.text("INSERT INTO collection_changes (collection_id, op, image_ids) VALUES (:c, :op, :ids) RETURNING seq"),
        {"c": collection_id, "op": op, "ids": np.asarray(image_ids).tolist()},
    )
    conn.execute(sa.text("SELECT pg_notify(:ch, :payload)"), {"ch": CHANNEL, "payload": f"{collection_id}:{seq}"})
    return int(seq)


def last_seq(conn: sa.Connection, collection_id: int) -> int:
    """The collection's latest change (0 if none)."""
    return int(conn.scalar(sa.text("SELECT coalesce(max(seq), 0) FROM collection_changes WHERE collection_id = :c"), {"c": collection_id}))


def changes_after(conn: sa.Connection, collection_id: int, seq: int) -> list[Change]:
    rows = conn.execute(
        sa.text("SELECT seq, op, image_ids FROM collection_changes WHERE collection_id = :c AND seq > :s ORDER BY seq"),
        {"c": collection_id, "s": seq},
    ).all()
    return [Change(int(r[0]), r[1], np.asarray(r[2], dtype=np.int64)) for r in rows]


def existing_files(conn: sa.Connection, collection_id: int, shas: list[str]) -> dict[str, int]:
    """sha256 -> image id of the collection's uploads among `shas`."""
    rows = conn.execute(
        sa.text("SELECT sha256, image_id FROM image_files WHERE collection_id = :c AND sha256 = ANY(:s)"),
        {"c": collection_id, "s": shas},
    ).all()
    return dict(rows)


def insert_uploads(conn: sa.Connection, collection_id: int, files: list[dict]) -> np.ndarray:
    """New `images` rows for uploaded files (dicts of sha256, media_type, size, file_name, label),
    their image_files rows and memberships; their ids, ascending in `files` order."""
    n = len(files)
    drawn = conn.scalars(
        sa.text("SELECT nextval(pg_get_serial_sequence('images', 'id')) FROM generate_series(1, :n)"), {"n": n}
    ).all()
    ids = np.sort(np.asarray(drawn, dtype=np.int64))
    conn.execute(
        sa.text(
            "INSERT INTO images (id, dataset, split, position, fine_label) "
            "SELECT id, :d, :d, id, -1 FROM unnest(CAST(:ids AS bigint[])) AS t(id)"
        ),
        {"d": UPLOAD_DATASET, "ids": ids.tolist()},
    )
    conn.execute(
        sa.text(
            "INSERT INTO image_files (image_id, collection_id, sha256, media_type, size, file_name, label) "
            "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:cs AS integer[]), CAST(:shas AS text[]), "
            "CAST(:types AS text[]), CAST(:sizes AS integer[]), CAST(:names AS text[]), CAST(:labels AS text[]))"
        ),
        {
            "ids": ids.tolist(), "cs": [collection_id] * n, "shas": [f["sha256"] for f in files],
            "types": [f["media_type"] for f in files], "sizes": [f["size"] for f in files],
            "names": [f["file_name"] for f in files], "labels": [f["label"] for f in files],
        },
    )
    conn.execute(
        sa.text("INSERT INTO collection_images (collection_id, image_id) SELECT :c, unnest(CAST(:ids AS bigint[]))"),
        {"c": collection_id, "ids": ids.tolist()},
    )
    return ids


def add_registered(conn: sa.Connection, collection: Collection, image_ids: np.ndarray) -> np.ndarray:
    """Make registered images (e.g. of another split) members; their ids, ascending. They must have
    the collection's predictions (and codes), and ids above every id the collection has held, since
    its indexes take images in id order."""
    ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    highest = conn.scalar(
        sa.text(
            "SELECT greatest((SELECT max(image_id) FROM collection_images WHERE collection_id = :c), "
            "(SELECT max(x) FROM collection_changes, unnest(image_ids) AS x WHERE collection_id = :c))"
        ),
        {"c": collection.id},
    )
    if highest is not None and ids[0] <= highest:
        raise ValueError(
            f"image {ids[0]} is not above {highest}, the highest image id collection {collection.name!r} has held: "
            "a collection takes registered images in id order; upload the files instead, or create another collection"
        )
    found = conn.execute(
        sa.text(
            "SELECT i.id, EXISTS (SELECT 1 FROM predictions p WHERE p.model = :p AND p.image_id = i.id), "
            "CAST(:h AS text) IS NULL OR EXISTS (SELECT 1 FROM hash_codes h WHERE h.model = :h AND h.image_id = i.id) "
            "FROM images i WHERE i.id = ANY(:ids)"
        ),
        {"p": collection.predictor, "h": collection.hash_model, "ids": ids.tolist()},
    ).all()
    state = {row[0]: row[1:] for row in found}
    for image_id in ids.tolist():
        if image_id not in state:
            raise LookupError(f"unknown image id {image_id}")
        predicted, encoded = state[image_id]
        if not predicted:
            raise LookupError(f"image {image_id} has no {collection.predictor} predictions: run `iwan predict` for its split")
        if not encoded:
            raise LookupError(f"image {image_id} has no codes of hash model {collection.hash_model!r}: run `iwan hash encode` for its split")
    conn.execute(
        sa.text("INSERT INTO collection_images (collection_id, image_id) SELECT :c, unnest(CAST(:ids AS bigint[]))"),
        {"c": collection.id, "ids": ids.tolist()},
    )
    return ids


def remove_members(conn: sa.Connection, collection_id: int, name: str, image_ids: np.ndarray) -> list[str]:
    """Take images out of the collection (uploads of it are deleted with their predictions and
    codes); LookupError naming ids it does not hold. The sha256 of the deleted uploads' files."""
    image_ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    held = set(conn.scalars(
        sa.text("SELECT image_id FROM collection_images WHERE collection_id = :c AND image_id = ANY(:ids)"),
        {"c": collection_id, "ids": image_ids.tolist()},
    ).all())
    unknown = [int(i) for i in image_ids if int(i) not in held]
    if unknown:
        raise LookupError(
            f"collection {name!r} holds no image {', '.join(map(str, unknown[:10]))}"
            f"{' ...' if len(unknown) > 10 else ''}: nothing was removed"
        )
    conn.execute(
        sa.text("DELETE FROM collection_images WHERE collection_id = :c AND image_id = ANY(:ids)"),
        {"c": collection_id, "ids": image_ids.tolist()},
    )
    uploads = conn.execute(
        sa.text("SELECT image_id, sha256 FROM image_files WHERE collection_id = :c AND image_id = ANY(:ids)"),
        {"c": collection_id, "ids": image_ids.tolist()},
    ).all()
    conn.execute(sa.text("DELETE FROM images WHERE id = ANY(:ids)"), {"ids": [r[0] for r in uploads]})
    return sorted({r[1] for r in uploads})


# --- single images ----------------------------------------------------------------------------------


def image_row(engine: Engine, image_id: int) -> dict:
    """What the database knows of one image; LookupError if there is no such image."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT i.id, i.dataset, i.split, i.position, i.path, f.label, c.name, f.sha256, f.media_type, f.file_name "
                "FROM images i LEFT JOIN image_files f ON f.image_id = i.id "
                "LEFT JOIN dataset_classes c ON c.dataset = i.dataset AND c.granularity = 'fine' AND c.label = i.fine_label "
                "WHERE i.id = :i"
            ),
            {"i": int(image_id)},
        ).first()
        if row is None:
            raise LookupError(f"unknown image id {image_id}")
        names = conn.scalars(
            sa.text(
                "SELECT c.name FROM collection_images m JOIN collections c ON c.id = m.collection_id "
                "WHERE m.image_id = :i ORDER BY c.name"
            ),
            {"i": int(image_id)},
        ).all()
    return {
        "image_id": row[0], "dataset": row[1], "split": row[2], "position": row[3], "path": row[4],
        "label": row[5] if row[5] is not None else row[6], "sha256": row[7], "media_type": row[8],
        "file_name": row[9], "collections": list(names),
    }


class _connection:
    """`with _connection(engine or connection) as conn`: borrow a connection, or use the one given."""

    def __init__(self, engine_or_conn):
        self.given = engine_or_conn if isinstance(engine_or_conn, sa.Connection) else None
        self.engine = None if self.given is not None else engine_or_conn

    def __enter__(self) -> sa.Connection:
        if self.given is not None:
            return self.given
        self.conn = self.engine.connect()
        return self.conn

    def __exit__(self, *exc) -> None:
        if self.given is None:
            self.conn.close()
