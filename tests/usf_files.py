"""Small Appendix A files for tests, written the way the official ones are: ISO-8859-1, inside
`<HTML>`/`<BODY>`/`<PRE>` wrapper lines, fields joined by ", ", `¥` for a missing value (`?` or
an empty field in other copies), numbers like `.145`, `0.0000`, `7.0` and 9999, words of several
words, LF line ends, and file D-F's header spelling TFR as TRF."""

from __future__ import annotations

import itertools
from pathlib import Path

from iwan.config import USF_FILES
from iwan.datasets.usf import FIELDS, HEADER

HEADER_LINE = ", ".join(HEADER)
TRF_HEADER_LINE = HEADER_LINE.replace("TFR", "TRF")


def row(cue="LAB", target="EXPERIMENT", **overrides) -> str:
    values = dict(zip(FIELDS, ["X"] * len(FIELDS)))
    values.update(
        cue=cue, target=target, normed="YES", n_group="138", n_produced="20", fsg=".145",
        bsg=".157", msg=".0107", osg=".0193", n_mediators="6", mmias="0", n_overlaps="7.0",
        omias="2", qss="19", qfr="3", qcon="5.69", qh="", qps="N", qmc="2.84", qpr=".42",
        qrsg=".037", quc="1", tss="15", tfr="122", tcon="¥", th="", tps="N", tmc="2.69",
        tpr=".69", trsg=".034", tuc="1",
    )
    values.update(overrides)
    return ", ".join(values[f] for f in FIELDS)


def unnormed(cue: str, target: str, fsg: str, missing: str = "¥") -> str:
    """A pair whose target is no normed word: every target-side and two-way value is missing."""
    gone = dict.fromkeys(
        ("bsg", "msg", "osg", "n_mediators", "mmias", "n_overlaps", "omias", "tss", "tfr", "tcon",
         "tmc", "tpr", "trsg"),
        missing,
    )
    return row(cue, target, normed="NO", fsg=fsg, th="", tps="", tuc="0", **gone)


def write(tmp_path: Path, *lines: str, name="Cue_Target_Pairs.X", wrap=True, newline="\n") -> Path:
    body = list(lines)
    if wrap:
        body = ["<HTML>", "<BODY>", "<PRE>", *body, "</PRE>", "</BODY>", "</HTML>"]
    path = tmp_path / name
    path.write_bytes((newline.join(body) + newline).encode("iso-8859-1"))
    return path


# A small Appendix A in the 8 official files. Two rows are copied from the real files verbatim.
APPENDIX = {
    "A-B": [
        "A, B, NO, 152, 69, .454, ¥, ¥, ¥, ¥, ¥, ¥, ¥, 13, 9999, ¥, , N, .62, .25, .019, 0, ¥, ¥, ¥, , , ¥, ¥, ¥, 0",
        "AARDVARK, PINK PANTHER, NO, 152, 4, .026, ¥, ¥, ¥, ¥, ¥, ¥, ¥, 13, 0, ¥, , N, .80, .10, .007, 1, ¥, ¥, ¥, , , ¥, ¥, ¥, 0",
        row("BIRD", "CAT", fsg=".210", bsg=".050"),
    ],
    "C": [row("CAT", "DOG", fsg=".500", bsg=".400"), row("CAT", "MOUSE", fsg=".250", bsg="0.000")],
    "D-F": [row("DOG", "CAT", fsg=".400", bsg=".500"), unnormed("DOG", "BEST FRIEND", ".013")],
    "G-K": [row("HOUSE", "HOME", fsg=".300", bsg=".200")],
    "L-O": [
        row("LAB", "EXPERIMENT"),
        row("LAB", "CHEMISTRY", fsg=".138", bsg=".047"),
        row("LAB", "WORK", fsg=".13", bsg="0.000"),
        unnormed("LAB", "COAT", ".007", missing="?"),
    ],
    "P-R": [row("RIVER", "WATER", fsg=".400", bsg=".100")],
    "S": [row("SHIP", "BOAT", fsg=".600", bsg=".300", qh="")],
    "T-Z": [unnormed("ZUCCHINI", "YUCK", ".014", missing="")],
}
# Every file has rows, as the real ones do (a file without rows is taken for a failed download).
# Counted by hand: 15 pairs; 10 cues; 14 targets (CAT twice); 22 words (CAT and DOG are both).
APPENDIX_PAIRS, APPENDIX_CUES, APPENDIX_TARGETS, APPENDIX_WORDS = 15, 10, 14, 22


def write_appendix(folder: Path) -> Path:
    """The 8 files of APPENDIX under their official names in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    assert tuple(APPENDIX) == USF_FILES
    for suffix, lines in APPENDIX.items():
        header = TRF_HEADER_LINE if suffix == "D-F" else HEADER_LINE
        write(folder, header, *lines, name=f"Cue_Target_Pairs.{suffix}")
    return folder


def write_chain(folder: Path, words: list[str], fsg: str = ".500") -> Path:
    """One Appendix A file in `folder` in which each word cues the next: a connected vocabulary
    of exactly `words`, for tests that need given words in the norms; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [row(cue, target, fsg=fsg, bsg=fsg) for cue, target in itertools.pairwise(words)]
    return write(folder, HEADER_LINE, *lines, name="Cue_Target_Pairs.A-B")
