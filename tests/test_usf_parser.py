"""The Appendix A parser against each quirk of the raw files, and the real files."""

from __future__ import annotations

import pytest
from usf_files import (
    APPENDIX_CUES,
    APPENDIX_PAIRS,
    APPENDIX_TARGETS,
    HEADER_LINE,
    row,
    write,
    write_appendix,
)

from iwan.datasets.usf import NormsFormatError, parse_file, parse_paths


def test_types_and_missing_values(tmp_path):
    [parsed] = parse_file(write(tmp_path, HEADER_LINE, row()))
    assert parsed.cue == "LAB" and parsed.target == "EXPERIMENT"
    assert parsed.normed is True
    assert parsed.n_group == 138 and isinstance(parsed.n_group, int)
    assert parsed.fsg == pytest.approx(0.145)
    assert parsed.n_overlaps == 7 and isinstance(parsed.n_overlaps, int)  # written "7.0"
    assert parsed.tcon is None  # the official ¥
    assert parsed.qh is None  # an empty field
    assert parsed.qps == "N"


@pytest.mark.parametrize("missing", ["¥", "?", ""])
def test_every_spelling_of_missing_is_null(tmp_path, missing):
    [parsed] = parse_file(write(tmp_path, HEADER_LINE, row(bsg=missing, normed=missing)))
    assert parsed.bsg is None and parsed.normed is None


def test_trf_spelling_of_the_header_is_accepted(tmp_path):
    header = HEADER_LINE.replace("TFR", "TRF")
    assert len(list(parse_file(write(tmp_path, header, row())))) == 1


def test_cue_word_cue_is_data_not_header(tmp_path):
    rows = list(parse_file(write(tmp_path, HEADER_LINE, row(cue="CUE", target="POOL"))))
    assert [(r.cue, r.target) for r in rows] == [("CUE", "POOL")]


@pytest.mark.parametrize(
    "word", ["TEST TUBE", "R & B", "ROCK'N'ROLL", "E=MC2", "AND/OR", "WEDNESDAY`S", "CAFÉ"]
)
def test_words_with_odd_characters(tmp_path, word):
    [parsed] = parse_file(write(tmp_path, HEADER_LINE, row(target=word)))
    assert parsed.target == word


def test_unwrapped_file_without_html_lines(tmp_path):
    assert len(list(parse_file(write(tmp_path, HEADER_LINE, row(), wrap=False)))) == 1


def test_windows_line_ends(tmp_path):
    [parsed] = parse_file(write(tmp_path, HEADER_LINE, row(tuc="1"), newline="\r\n"))
    assert parsed.tuc == 1


def test_appendix_folder_reads_every_file_in_name_order(tmp_path):
    rows = parse_paths([write_appendix(tmp_path / "usf-appendix-a")])
    assert len(rows) == APPENDIX_PAIRS
    assert len({r.cue for r in rows}) == APPENDIX_CUES
    assert len({r.target for r in rows}) == APPENDIX_TARGETS
    assert [r.cue for r in rows][:3] == ["A", "AARDVARK", "BIRD"] and rows[-1].cue == "ZUCCHINI"
    a_b, aardvark = rows[0], rows[1]
    # Copied from the real file A-B: ¥ nearly everywhere, QFR 9999, a target of two words.
    assert (a_b.normed, a_b.fsg, a_b.bsg, a_b.qfr, a_b.qh, a_b.tuc) == (False, 0.454, None, 9999, None, 0)
    assert aardvark.target == "PINK PANTHER"
    lab = sorted((r for r in rows if r.cue == "LAB"), key=lambda r: -r.fsg)
    assert [(r.target, r.fsg) for r in lab[:3]] == [("EXPERIMENT", 0.145), ("CHEMISTRY", 0.138), ("WORK", 0.13)]
    coat = next(r for r in rows if r.target == "COAT")  # written with ? for missing values
    assert (coat.bsg, coat.tfr, coat.tcon) == (None, None, None)


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = write(tmp_path, HEADER_LINE, row(), "LAB, WORK, YES")
    with pytest.raises(NormsFormatError, match=rf"{path.name}:6: expected 31 fields"):
        list(parse_file(path))


def test_bad_number_names_the_column(tmp_path):
    path = write(tmp_path, HEADER_LINE, row(fsg=".1x5"))
    with pytest.raises(NormsFormatError, match=r":5: column FSG: '.1x5' is not a number"):
        list(parse_file(path))


def test_fractional_count_is_rejected(tmp_path):
    with pytest.raises(NormsFormatError, match="column #G: '1.5' is not a whole number"):
        list(parse_file(write(tmp_path, HEADER_LINE, row(n_group="1.5"))))


def test_missing_header_is_an_error(tmp_path):
    with pytest.raises(NormsFormatError, match="data before the header"):
        list(parse_file(write(tmp_path, row())))


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        parse_paths([tmp_path / "absent"])


@pytest.mark.real_data("usf")
def test_real_appendix_a(shared_data):
    rows = parse_paths([shared_data / "usf-appendix-a"])
    assert len(rows) == 72_176
    assert len({r.cue for r in rows}) == 5_018
    assert len({r.target for r in rows}) == 10_469
    lab = sorted((r for r in rows if r.cue == "LAB"), key=lambda r: -r.fsg)
    assert [(r.target, r.fsg) for r in lab[:3]] == [
        ("EXPERIMENT", 0.145), ("CHEMISTRY", 0.138), ("WORK", 0.13)
    ]
