"""PostgreSQL's binary forms, built and parsed by numpy: COPY rows of fixed width for bulk writes,
and arrays (`array_send`) for bulk reads.

Writes: a predictions row (a model, an image id and two arrays of `top` entries) or a codes row (a
model, an id, a bit(n) and a vector of d floats) has the same byte length every time, so a batch of
them is one numpy structured array written with a single `tobytes()`, with no Python work per row
(per-row `write_row` spent most of its time in Python: benchmarks/bench_store.py). The layout
(PostgreSQL docs, "COPY ... BINARY"): a 19-byte header, then per row an int16 field count and per
field an int32 byte length and the value in the type's binary send form, all big-endian; an int16
-1 ends the data. Arrays carry their own header (dimensions, a null flag, the element type's oid,
the length, the lower bound) and an int32 length before each element; pgvector sends a vector as
int16 dimensions, int16 zero and the float4s; bit(n) as an int32 bit count and the bits, most
significant first.

Reads: COPY TO sends one message per row, and psycopg spends 10-30 us on each message, which at
10M images is minutes. A page of images is read instead as one row of `array_send(array_agg(...))`
columns: one message per 65,536 images, parsed by `np.frombuffer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
TRAILER = b"\xff\xff"
_INT2_OID = 21
_FLOAT4_OID = 700


@dataclass(frozen=True)
class Field:
    """One column of a fixed-width row: its name in the structured array, the dtype of its value
    (already big-endian, as on the wire) and how the value is framed."""

    name: str
    kind: str  # "int8", "bytes" (text or bytea of a fixed length), "int2[]", "float4[]", "vector", "bit"
    size: int = 0
    """Elements of an array or vector, bits of a bit(n), bytes of a "bytes" value."""

    @property
    def wire(self) -> np.dtype:
        if self.kind == "int8":
            return np.dtype(">i8")
        if self.kind == "bytes":
            return np.dtype(f"S{self.size}") if self.size else np.dtype([])
        if self.kind in ("int2[]", "float4[]"):
            element = ">i2" if self.kind == "int2[]" else ">f4"
            return np.dtype([("header", ">i4", 5), ("items", [("length", ">i4"), ("value", element)], self.size)])
        if self.kind == "vector":
            return np.dtype([("dim", ">i2"), ("unused", ">i2"), ("value", ">f4", self.size)])
        if self.kind == "bit":
            return np.dtype([("bits", ">i4"), ("value", "u1", -(-self.size // 8))])
        raise ValueError(f"binary COPY: field kind {self.kind!r} is not one of the fixed-width kinds")


def row_dtype(fields: list[Field]) -> np.dtype:
    """The structured dtype of one row on the wire: the field count, then each field's length and value."""
    parts: list[tuple] = [("count", ">i2")]
    for field in fields:
        parts += [(f"{field.name}_length", ">i4"), (field.name, field.wire)]
    return np.dtype(parts)


def empty_rows(fields: list[Field], n: int) -> np.ndarray:
    """n rows whose framing (counts, lengths, array and vector headers) is filled in: the caller
    sets only the values."""
    rows = np.zeros(n, dtype=row_dtype(fields))
    rows["count"] = len(fields)
    for field in fields:
        rows[f"{field.name}_length"] = field.wire.itemsize
        value = rows[field.name]
        if field.kind in ("int2[]", "float4[]"):
            oid = _INT2_OID if field.kind == "int2[]" else _FLOAT4_OID
            value["header"] = (1, 0, oid, field.size, 1)
            value["items"]["length"] = 2 if field.kind == "int2[]" else 4
        elif field.kind == "vector":
            value["dim"] = field.size
        elif field.kind == "bit":
            value["bits"] = field.size
    return rows


def copy_in(conn, statement: str, fields: list[Field], n: int, batch: int,
            fill: Callable[[np.ndarray, slice], None]) -> None:
    """Send n rows through `statement` (a COPY ... FROM STDIN (FORMAT BINARY) on the psycopg
    connection under SQLAlchemy's `conn`), `batch` rows at a time: `fill(rows, part)` sets the
    values of `empty_rows` for the rows `part` of the caller's arrays."""
    driver = conn.connection.driver_connection
    with driver.cursor().copy(statement) as copy:
        copy.write(HEADER)
        for start in range(0, n, batch):
            part = slice(start, min(n, start + batch))
            rows = empty_rows(fields, part.stop - part.start)
            fill(rows, part)
            copy.write(rows.tobytes())
        copy.write(TRAILER)


# Element kinds of `array_send` output: (element dtype on the wire, its value's length in bytes).
_ELEMENTS = {"int8": ">i8", "int4": ">i4", "int2": ">i2", "float4": ">f4"}


def parse_array(data: bytes | memoryview, kind: str, size: int = 0) -> np.ndarray:
    """The values of an array in PostgreSQL's binary send form (`array_send(...)`), shaped by its
    dimensions: (n,) or (n, m) numbers for int8/int4/int2/float4; (n, bytes) for "bit" (bit(size)
    elements) and (n, size) float32 rows for "vector" (pgvector elements of size dimensions).
    ValueError for a NULL element or an element of another width."""
    view = memoryview(data)
    ndim, has_null = int.from_bytes(view[0:4], "big"), int.from_bytes(view[4:8], "big")
    if has_null:
        raise ValueError("binary array: it holds a NULL element")
    header = np.frombuffer(view[12 : 12 + 8 * ndim], dtype=">i4").reshape(ndim, 2)
    shape = tuple(int(d) for d in header[:, 0])
    if kind in _ELEMENTS:
        element = np.dtype([("length", ">i4"), ("value", _ELEMENTS[kind])])
    elif kind == "bit":
        element = np.dtype([("length", ">i4"), ("bits", ">i4"), ("value", "u1", -(-size // 8))])
    elif kind == "vector":
        element = np.dtype([("length", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("value", ">f4", size)])
    else:
        raise ValueError(f"binary array: element kind {kind!r} is not one of {[*_ELEMENTS, 'bit', 'vector']}")
    count = int(np.prod(shape)) if ndim else 0
    body = view[12 + 8 * ndim :]
    if len(body) != count * element.itemsize:
        raise ValueError(f"binary array: {len(body)} bytes for {count} {kind} elements of {element.itemsize - 4} bytes "
                         "(an element of another width)")
    items = np.frombuffer(body, dtype=element)
    width = element.itemsize - 4
    if (items["length"] != width).any() or (kind == "bit" and (items["bits"] != size).any()) \
            or (kind == "vector" and (items["dim"] != size).any()):
        raise ValueError(f"binary array: an element is not a {kind} of the expected width")
    values = items["value"]
    return values.reshape(shape + values.shape[1:]) if count else values


def iter_pages(conn, query: str, params: dict, page_rows: int) -> Iterator[tuple]:
    """The rows of `query` page by page: it selects one row of `array_send(array_agg(...))`
    columns, the first of them the page's ids (int8), over the ids above %(after)s, at most
    %(rows)s of them; None once past the last. One result message per page, parsed by numpy,
    instead of one per image (psycopg spends some 10-30 us on each message it reads)."""
    driver = conn.connection.driver_connection
    after = -(2**63)
    with driver.cursor() as cursor:
        while True:
            row = cursor.execute(query, {**params, "after": after, "rows": page_rows}).fetchone()
            if row is None or row[0] is None:
                return
            ids = parse_array(row[0], "int8").astype(np.int64)
            yield (ids, *row[1:])
            if len(ids) < page_rows:
                return
            after = int(ids[-1])


def bits_to_bytes(codes: np.ndarray, n_bits: int) -> np.ndarray:
    """(n,) uint64 codes (hashing.codes' order: unit 0 most significant) -> (n, ceil(n_bits / 8))
    uint8, the bytes of PostgreSQL's bit(n_bits) binary form."""
    n_bytes = -(-n_bits // 8)
    shifted = np.asarray(codes, dtype=np.uint64) << np.uint64(8 * n_bytes - n_bits)
    return shifted.astype(">u8").view(np.uint8).reshape(len(codes), 8)[:, 8 - n_bytes :]


def bytes_to_bits(data: np.ndarray, n_bits: int) -> np.ndarray:
    """The inverse of `bits_to_bytes`."""
    n_bytes = -(-n_bits // 8)
    words = np.zeros((len(data), 8), dtype=np.uint8)
    words[:, 8 - n_bytes :] = data
    return words.view(">u8").ravel().astype(np.uint64) >> np.uint64(8 * n_bytes - n_bits)
