"""Class names onto norm words: rules on small vocabularies, then real ImageNet and CIFAR-100 names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hashing.hierarchy import load_names
from iwan.datasets.usf import parse_paths
from iwan.tv import models
from iwan.vision.words import RULES, WordMatcher, map_class_names, plurals, singulars


@pytest.fixture(scope="module")
def usf_vocabulary(shared_data) -> list[str]:
    rows = parse_paths([shared_data / "usf-appendix-a"])
    return sorted({r.cue for r in rows} | {r.target for r in rows})


@pytest.fixture(scope="module")
def imagenet_names() -> list[str]:
    return models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]


@pytest.fixture(scope="module")
def cifar100_names() -> list[str]:
    """CIFAR-100's class names in label order, as the repo ships them with Barz's hierarchy."""
    names = load_names(Path(__file__).resolve().parent.parent / "data" / "cifar100" / "class_names.txt")
    return [names[i] for i in range(100)]


def mapped(names, vocabulary) -> dict[str, tuple[str | None, str]]:
    m = map_class_names(names, vocabulary)
    return {n: (w, how) for n, w, how in zip(m.names, m.words, m.rules)}


# --- rules -----------------------------------------------------------------------------


def test_case_and_phrase_before_head_noun():
    vocabulary = ["CAT", "TEST TUBE", "TUBE", "SHARK"]
    assert mapped(["Cat", "test tube", "test_tube", "rubber tube", "great white shark"], vocabulary) == {
        "Cat": ("CAT", "exact"),
        "test tube": ("TEST TUBE", "exact"),
        "test_tube": ("TEST TUBE", "exact"),
        "rubber tube": ("TUBE", "head"),
        "great white shark": ("SHARK", "head"),
    }


def test_longest_tail_wins_over_the_last_word():
    assert mapped(["great white shark"], ["SHARK", "WHITE SHARK"]) == {
        "great white shark": ("WHITE SHARK", "head")
    }


def test_compound_spellings_meet():
    vocabulary = ["COFFEE POT", "SHIHTZU", "JACK-O-LANTERN"]
    assert mapped(["coffeepot", "Shih-Tzu", "jack-o'-lantern"], vocabulary) == {
        "coffeepot": ("COFFEE POT", "compound"),
        "Shih-Tzu": ("SHIHTZU", "compound"),
        "jack-o'-lantern": ("JACK-O-LANTERN", "compound"),
    }


@pytest.mark.parametrize(
    "plural, singular",
    [
        ("apples", "APPLE"),
        ("boxes", "BOX"),
        ("buses", "BUS"),
        ("butterflies", "BUTTERFLY"),
        ("cookies", "COOKIE"),
        ("leaves", "LEAF"),
        ("knives", "KNIFE"),
        ("sleeves", "SLEEVE"),
        ("potatoes", "POTATO"),
        ("shoes", "SHOE"),
        ("women", "WOMAN"),
        ("mice", "MOUSE"),
    ],
)
def test_plural_names_find_the_singular_word(plural, singular):
    vocabulary = ["APPLE", "BOX", "BUS", "BUTTERFLY", "COOKIE", "LEAF", "KNIFE", "SLEEVE",
                  "POTATO", "SHOE", "WOMAN", "MOUSE"]
    assert mapped([plural], vocabulary) == {plural: (singular, "number")}


def test_singular_names_find_the_plural_word_and_exact_beats_number():
    vocabulary = ["JEANS", "GLASS", "GLASSES", "POTATOES"]
    assert mapped(["jean", "glasses", "glass", "mashed potato"], vocabulary) == {
        "jean": ("JEANS", "number"),
        "glasses": ("GLASSES", "exact"),
        "glass": ("GLASS", "exact"),
        "mashed potato": ("POTATOES", "head_number"),
    }


def test_singular_s_words_are_not_stripped():
    assert singulars("GLASS") == singulars("CACTUS") == singulars("IRIS") == []
    assert mapped(["cactus"], ["CACTU"]) == {"cactus": (None, "unmapped")}
    assert plurals("BOX") == ["BOXES"] and plurals("BERRY") == ["BERRIES"]


def test_head_before_a_preposition():
    vocabulary = ["HEN", "WOODS", "BICYCLE", "TWO", "BUILT", "CUP", "TEA"]
    assert mapped(["hen-of-the-woods", "bicycle-built-for-two", "cup of tea"], vocabulary) == {
        "hen-of-the-woods": ("HEN", "head"),
        "bicycle-built-for-two": ("BICYCLE", "head"),
        "cup of tea": ("CUP", "head"),
    }


def test_closed_compound_splits_only_into_two_words():
    vocabulary = ["GOLD", "FISH", "PIE", "LIMP", "KIN", "LADY", "BUG"]
    assert mapped(["goldfish", "magpie", "limpkin", "ladybug"], vocabulary) == {
        "goldfish": ("FISH", "compound_head"),
        "magpie": (None, "unmapped"),  # MAG is no word
        "limpkin": (None, "unmapped"),  # heads of three letters are not split off
        "ladybug": (None, "unmapped"),
    }


def test_vocabulary_spelling_and_ids_are_returned():
    vocabulary = ["dog", "Cat"]
    m = map_class_names(["CAT", "dogs", "zebra"], vocabulary)
    assert m.words == ("Cat", "dog", None)
    np.testing.assert_array_equal(m.word_ids, [1, 0, -1])
    assert m.word_ids.dtype == np.int64


def test_unmapped_names_are_kept_and_reported():
    m = map_class_names(["cat", "zebra", "okapi", "cat"], ["CAT"])
    assert m.names == ("cat", "zebra", "okapi", "cat")
    assert m.unmapped == ["zebra", "okapi"]
    assert m.counts() == dict.fromkeys(RULES, 0) | {"exact": 2, "unmapped": 2}
    report = m.report(examples=1)
    assert "2 of 4 class names mapped" in report
    assert "2 map to no word" in report and "'zebra'" in report and "1 more" in report
    assert "okapi" not in report


def test_empty_and_non_string_names():
    assert map_class_names(["", "  "], ["CAT"]).unmapped == ["", "  "]
    with pytest.raises(TypeError, match="class name 3 is a int"):
        map_class_names(["cat", 3], ["CAT"])


def test_matcher_reuses_its_index():
    matcher = WordMatcher(["CAT", "DOG"])
    assert matcher.map(["cats"]).words == ("CAT",)
    assert matcher.map(["dog"]).words == ("DOG",)


# --- real class names onto the real USF vocabulary -----------------------------------


@pytest.mark.real_data("usf")
def test_imagenet_names(imagenet_names, usf_vocabulary):
    m = mapped(imagenet_names, usf_vocabulary)
    assert len(m) == len(set(imagenet_names))
    expect = {
        "great white shark": ("SHARK", "head"),
        "tiger shark": ("SHARK", "head"),
        "Egyptian cat": ("CAT", "head"),
        "tiger cat": ("CAT", "head"),
        "tiger": ("TIGER", "exact"),
        "coffeepot": ("COFFEE POT", "compound"),
        "jean": ("JEANS", "number"),
        "goldfish": ("FISH", "compound_head"),
        "hen-of-the-woods": ("HEN", "head"),
        "bicycle-built-for-two": ("BICYCLE", "head"),
        "tabby": (None, "unmapped"),
    }
    assert {name: m[name] for name in expect} == expect


@pytest.mark.real_data("usf")
def test_imagenet_unmapped_count_is_reported(imagenet_names, usf_vocabulary):
    mapping = map_class_names(imagenet_names, usf_vocabulary)
    unmapped = mapping.counts()["unmapped"]
    assert len(mapping.unmapped) == unmapped == (mapping.word_ids < 0).sum()
    # 695 of 1000 map today; a change of rules that loses many names should be noticed.
    assert 650 <= 1000 - unmapped <= 800
    assert f"{unmapped} map to no word" in mapping.report()


@pytest.mark.real_data("usf")
def test_cifar100_names(cifar100_names, usf_vocabulary):
    m = mapped(cifar100_names, usf_vocabulary)
    assert len(cifar100_names) == 100
    assert m["maple_tree"] == ("TREE", "head")
    assert m["aquarium_fish"] == ("FISH", "head")
    assert m["sweet_pepper"] == ("PEPPER", "head")
    assert m["pickup_truck"] == ("TRUCK", "head")
    assert m["flatfish"] == ("FISH", "compound_head")
    assert m["apple"] == ("APPLE", "exact")
    assert sorted(n for n, (w, _) in m.items() if w is None) == ["poppy", "streetcar"]
