"""Small Appendix A files for tests, written the way the official ones are."""

from __future__ import annotations

from pathlib import Path

from iwan.norms.usf import FIELDS, HEADER

HEADER_LINE = ", ".join(HEADER)


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


def write(tmp_path: Path, *lines: str, name="Cue_Target_Pairs.X", wrap=True) -> Path:
    body = list(lines)
    if wrap:
        body = ["<HTML>", "<BODY>", "<PRE>", *body, "</pre>", "</BODY>", "</HTML>"]
    path = tmp_path / name
    path.write_bytes(("\r\n".join(body) + "\r\n").encode("iso-8859-1"))
    return path
