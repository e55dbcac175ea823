"""ImageNet hypernym runs: names resolve in the real category list, and the overlay's rules."""

from __future__ import annotations

from iwan.tv import models
from iwan.vision.imagenet_words import RUNS, with_hypernyms
from iwan.vision.words import WordMatcher

CATEGORIES = models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
VOCABULARY = ["DOG", "CAT", "LION", "BULL", "AIRPLANE", "LINER", "CONVERTIBLE", "CAR", "SHARK", "FISH", "TABBY"]


def test_every_run_is_an_ordered_span_of_the_real_categories():
    position = {name: i for i, name in enumerate(CATEGORIES)}
    for first, last, words in RUNS:
        assert first in position and last in position, (first, last)
        assert position[first] <= position[last]
        assert words and all(w == w.upper() for w in words)
    dogs = [i for i, (f, _, _) in enumerate(RUNS) if f == "Chihuahua"]
    assert position[RUNS[dogs[0]][1]] - position["Chihuahua"] + 1 == 118


def mapped(name: str) -> tuple[str | None, str]:
    mapping = with_hypernyms(WordMatcher(VOCABULARY).map(CATEGORIES), VOCABULARY)
    i = CATEGORIES.index(name)
    return mapping.words[i], mapping.rules[i]


def test_runs_fill_misses_and_replace_head_noun_guesses():
    assert mapped("Japanese spaniel") == ("DOG", "hypernym")  # no word of its own
    assert mapped("Boston bull") == ("DOG", "hypernym")  # the head noun BULL misleads
    assert mapped("great white shark") == ("FISH", "hypernym")
    assert mapped("lion")[0] == "LION"  # outside any run


def test_own_name_wins_inside_a_run_but_single_corrections_always_apply():
    assert mapped("tabby") == ("TABBY", "exact")
    assert mapped("Persian cat") == ("CAT", "hypernym")
    assert mapped("airliner") == ("AIRPLANE", "hypernym")
    assert mapped("convertible") == ("CAR", "hypernym")


def test_other_category_lists_are_left_alone():
    names = ["dog", "cat", "truck"]
    plain = WordMatcher(VOCABULARY).map(names)
    overlaid = with_hypernyms(plain, VOCABULARY)
    assert overlaid.words == plain.words and overlaid.rules == plain.rules
