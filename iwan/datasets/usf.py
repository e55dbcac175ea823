"""Parser for Appendix A of the University of South Florida free association norms.

The raw files (`Cue_Target_Pairs.A-B` ... `.T-Z`) are ISO-8859-1 text inside an HTML `<PRE>`
wrapper, one header row each, fields separated by ", ". Missing values are `¥` in the official
files; copies in circulation use `?` or an empty field instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

ENCODING = "iso-8859-1"
SEPARATOR = ", "
MISSING = frozenset({"¥", "?", ""})


@dataclass(frozen=True)
class Column:
    header: str
    field: str
    kind: str  # "text", "bool", "int" or "real"


# All 31 columns of Appendix A, in file order. Field names are the database column names.
COLUMNS: tuple[Column, ...] = (
    Column("CUE", "cue", "text"),
    Column("TARGET", "target", "text"),
    Column("NORMED?", "normed", "bool"),
    Column("#G", "n_group", "int"),
    Column("#P", "n_produced", "int"),
    Column("FSG", "fsg", "real"),
    Column("BSG", "bsg", "real"),
    Column("MSG", "msg", "real"),
    Column("OSG", "osg", "real"),
    Column("#M", "n_mediators", "int"),
    Column("MMIAS", "mmias", "int"),
    Column("#O", "n_overlaps", "int"),
    Column("OMIAS", "omias", "int"),
    Column("QSS", "qss", "int"),
    Column("QFR", "qfr", "int"),
    Column("QCON", "qcon", "real"),
    Column("QH", "qh", "text"),
    Column("QPS", "qps", "text"),
    Column("QMC", "qmc", "real"),
    Column("QPR", "qpr", "real"),
    Column("QRSG", "qrsg", "real"),
    Column("QUC", "quc", "int"),
    Column("TSS", "tss", "int"),
    Column("TFR", "tfr", "int"),
    Column("TCON", "tcon", "real"),
    Column("TH", "th", "text"),
    Column("TPS", "tps", "text"),
    Column("TMC", "tmc", "real"),
    Column("TPR", "tpr", "real"),
    Column("TRSG", "trsg", "real"),
    Column("TUC", "tuc", "int"),
)
FIELDS = tuple(c.field for c in COLUMNS)
HEADER = tuple(c.header for c in COLUMNS)
# File D-F of the official set spells TFR as TRF.
HEADER_ALIASES = {"TRF": "TFR"}

if TYPE_CHECKING:
    # mypy cannot read a NamedTuple built from COLUMNS: it sees the two text keys typed (parse_file
    # refuses a row without them) and every other field, by name, as an object.
    class UsfRow(NamedTuple):
        cue: str
        target: str

        def __getattr__(self, field: str) -> object: ...
else:
    UsfRow = NamedTuple("UsfRow", [(c.field, object) for c in COLUMNS])


# Longer cues or targets are damage, not words; PostgreSQL's index on words would also refuse
# one beyond about 2,700 bytes, with a traceback instead of a line number.
MAX_WORD_LENGTH = 100


class NormsFormatError(ValueError):
    """A line of a norms file that cannot be read; the message starts with `file:line:`."""


def _convert(kind: str, raw: str, where: str, header: str):
    if raw in MISSING:
        return None
    if kind == "text":
        return raw
    if kind == "bool":
        if raw in ("YES", "NO"):
            return raw == "YES"
        raise NormsFormatError(f"{where}: column {header}: expected YES or NO, found {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise NormsFormatError(f"{where}: column {header}: {raw!r} is not a number") from None
    if kind == "real":
        return value
    # Counts are sometimes written as "10.0" (#O); anything fractional is an error.
    if not value.is_integer():
        raise NormsFormatError(f"{where}: column {header}: {raw!r} is not a whole number")
    return int(value)


def _is_header(fields: list[str]) -> bool:
    return tuple(HEADER_ALIASES.get(f, f) for f in fields) == HEADER


def _is_wrapper(line: str) -> bool:
    return line.startswith("<") and line.endswith(">")


def parse_file(path: Path) -> Iterator[UsfRow]:
    """Rows of one Appendix A file; raises NormsFormatError on the first bad line."""
    path = Path(path)
    seen_header = False
    with path.open(encoding=ENCODING, newline="") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n").strip()
            if not line or _is_wrapper(line):
                continue
            fields = [f.strip() for f in line.split(SEPARATOR)]
            where = f"{path}:{number}"
            if "\0" in line:
                raise NormsFormatError(
                    f"{where}: holds a NUL byte, which no text column can store: the file is "
                    "damaged or not an Appendix A file"
                )
            # `CUE` is itself a cue word, so only the exact header row is a header.
            if _is_header(fields):
                if seen_header:
                    raise NormsFormatError(f"{where}: a second header row")
                seen_header = True
                continue
            if fields[0] == "CUE" and fields[1] == "TARGET":
                raise NormsFormatError(
                    f"{where}: header row does not have the 31 Appendix A columns: {line[:80]!r}"
                )
            if len(fields) != len(COLUMNS):
                raise NormsFormatError(
                    f"{where}: expected {len(COLUMNS)} fields separated by {SEPARATOR!r}, "
                    f"found {len(fields)}"
                )
            if not seen_header:
                raise NormsFormatError(f"{where}: data before the header row (CUE, TARGET, ...)")
            values = [_convert(c.kind, raw, where, c.header) for c, raw in zip(COLUMNS, fields)]
            if values[0] is None or values[1] is None:
                raise NormsFormatError(f"{where}: empty cue or target")
            for word in values[:2]:
                if len(word) > MAX_WORD_LENGTH:
                    raise NormsFormatError(
                        f"{where}: a cue or target of {len(word):,} characters ({word[:20]!r}...); "
                        f"words have at most {MAX_WORD_LENGTH}: the file is damaged"
                    )
            yield UsfRow(*values)
    if not seen_header:
        raise NormsFormatError(f"{path}:1: no header row (CUE, TARGET, NORMED?, ...) found")


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, and the `Cue_Target_Pairs.*` files of named folders, sorted."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.glob("Cue_Target_Pairs.*") if p.is_file())
            if not found:
                raise FileNotFoundError(f"{path}: no Cue_Target_Pairs.* files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def parse_paths(paths: Iterable[Path]) -> list[UsfRow]:
    """Every row of the given files and folders."""
    return [row for path in expand_paths(paths) for row in parse_file(path)]


def checksum(files: Iterable[Path]) -> str:
    """SHA-256 over the files' names and bytes, in the given order: identifies a load's input."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()
