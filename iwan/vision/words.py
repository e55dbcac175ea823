"""Classifier class names mapped onto the vocabulary of a norm set.

An ImageNet or CIFAR class name ("great white shark", "maple_tree", "apples") rarely is a norm
word as it stands: norm words are UPPERCASE, some are phrases ("TEST TUBE"), and the norms list
one number of a noun where the classifier uses the other. Each name is tried as a series of
candidates, most specific first; the first candidate in the vocabulary wins:

1. the whole name, upper-cased (`exact`);
2. the whole name with spaces, hyphens, underscores, apostrophes and dots ignored, so that
   "coffeepot" finds "COFFEE POT" and "Shih-Tzu" finds "SHIHTZU" (`compound`);
3. the whole name with its last word in the other grammatical number (`number`);
4. shorter and shorter tails of the name, which in English end in the head noun ("great white
   shark" -> "WHITE SHARK" -> "SHARK"), each also in the other number (`head`, `head_number`);
5. the right part of a closed compound of two words ("goldfish" -> "FISH", `compound_head`).

A name with a preposition ("hen-of-the-woods", "bicycle-built-for-two") has its head before the
preposition, so its tails are taken from the words before it. Names with no candidate in the
vocabulary stay in the mapping with word None and rule `unmapped`: `report()` lists them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# `hypernym` is set by iwan.vision.imagenet_words, which overlays ImageNet subtrees on these rules.
RULES = ("exact", "compound", "number", "head", "head_number", "compound_head", "hypernym", "unmapped")

# Closed compounds split only into a modifier of 3+ letters and a head of 4+: three-letter
# heads were as often wrong as right on ImageNet (lady|bug, but limp|kin, ring|let, lap|top).
_MIN_COMPOUND_MODIFIER = 3
_MIN_COMPOUND_HEAD = 4
# A head noun precedes these ("bicycle-built-for-two" is a bicycle).
_PREPOSITIONS = frozenset({"OF", "FOR", "WITH", "IN", "ON"})
# Nouns whose number is not made by the -s rules below, both ways.
_IRREGULAR_PLURALS = {
    "MAN": "MEN", "WOMAN": "WOMEN", "CHILD": "CHILDREN", "PERSON": "PEOPLE", "MOUSE": "MICE",
    "GOOSE": "GEESE", "FOOT": "FEET", "TOOTH": "TEETH", "OX": "OXEN", "LOUSE": "LICE",
    "CACTUS": "CACTI", "FUNGUS": "FUNGI",
}
_IRREGULAR_SINGULARS = {plural: single for single, plural in _IRREGULAR_PLURALS.items()}
# Words with these endings are singular ("glass", "cactus", "iris"): never stripped.
_SINGULAR_S_ENDINGS = ("SS", "US", "IS")
# Plurals add -es after these endings ("boxes", "buses", "peaches"), and some after -o.
_SIBILANT_ENDINGS = ("S", "X", "Z", "CH", "SH")
_ES_STEM_ENDINGS = (*_SIBILANT_ENDINGS, "O")


@dataclass(frozen=True)
class WordMapping:
    """Per class name (in the order given): the vocabulary word or None, and how it was found."""

    names: tuple[str, ...]
    words: tuple[str | None, ...]
    rules: tuple[str, ...]
    """The matching rule that mapped each name."""
    word_ids: np.ndarray
    """int64 position of each word in the vocabulary given; -1 for an unmapped name."""

    @property
    def unmapped(self) -> list[str]:
        return [name for name, word in zip(self.names, self.words) if word is None]

    def counts(self) -> dict[str, int]:
        """How many names each rule mapped, in the order of RULES (zero counts kept)."""
        found = Counter(self.rules)
        return {rule: found[rule] for rule in RULES}

    def report(self, examples: int = 10) -> str:
        """A readable summary: how many names mapped and how, and which did not."""
        counts = self.counts()
        mapped = len(self.names) - counts["unmapped"]
        how = ", ".join(f"{m} {n}" for m, n in counts.items() if m != "unmapped" and n)
        lines = [f"{mapped} of {len(self.names)} class names mapped to a word ({how or 'none'})"]
        missing = self.unmapped
        if missing:
            shown = ", ".join(repr(n) for n in missing[:examples])
            more = f" and {len(missing) - examples} more" if len(missing) > examples else ""
            lines.append(f"{len(missing)} map to no word and get no image-word edge: {shown}{more}")
        return "\n".join(lines)


def map_class_names(names: Iterable[str], vocabulary: Sequence[str]) -> WordMapping:
    """Map each class name onto a word of `vocabulary` (see the module doc for the rules)."""
    return WordMatcher(vocabulary).map(names)


class WordMatcher:
    """The matching rules over one vocabulary, indexed once for many look-ups."""

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = vocabulary
        self._index = _VocabularyIndex(vocabulary)

    def map(self, names: Iterable[str]) -> WordMapping:
        names = tuple(names)
        ids: list[int] = []
        rules: list[str] = []
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"class name {name!r} is a {type(name).__name__}, not a str")
            word_id, rule = _match(name, self._index) or (-1, "unmapped")
            ids.append(word_id)
            rules.append(rule)
        words = tuple(self.vocabulary[i] if i >= 0 else None for i in ids)
        return WordMapping(names, words, tuple(rules), np.asarray(ids, dtype=np.int64))


class _VocabularyIndex:
    """Vocabulary positions by upper-cased word and by compact form (letters and digits only)."""

    def __init__(self, vocabulary: Sequence[str]):
        self.exact: dict[str, int] = {}
        self.compact: dict[str, int] = {}
        # The first spelling of a word wins, so the mapping does not depend on later duplicates.
        for position, word in enumerate(vocabulary):
            self.exact.setdefault(word.upper(), position)
            self.compact.setdefault(_compact(word), position)

    def find(self, phrase: str) -> tuple[int, bool] | None:
        """(position, found exactly) of a phrase, exact spelling first; None if absent."""
        if phrase in self.exact:
            return self.exact[phrase], True
        compact = _compact(phrase)
        if compact and compact in self.compact:
            return self.compact[compact], False
        return None


def _compact(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def _match(name: str, index: _VocabularyIndex) -> tuple[int, str] | None:
    words = re.sub(r"[\s_]+", " ", name).strip().upper().split(" ")
    if words == [""]:
        return None
    whole = " ".join(words)
    found = index.find(whole)
    if found:
        return found[0], "exact" if found[1] else "compound"
    for variant in _number_variants(words):
        if found := index.find(variant):
            return found[0], "number"
    head = _before_preposition(words)
    for start in range(len(head)):
        tail = head[start:]
        if tail == words:
            continue  # the whole name was tried above
        if found := index.find(" ".join(tail)):
            return found[0], "head"
        for variant in _number_variants(tail):
            if found := index.find(variant):
                return found[0], "head_number"
    return _closed_compound_head(head[-1], index)


def _before_preposition(words: list[str]) -> list[str]:
    """The words before the first preposition, which end in the head noun.

    In a hyphenated name the head is its first part ("hen-of-the-woods", "bicycle-built-for-two").
    """
    for i, word in enumerate(words):
        parts = word.split("-")
        if i > 0 and word in _PREPOSITIONS:
            return words[:i]
        if len(parts) > 2 and _PREPOSITIONS.intersection(parts[1:]):
            return [*words[:i], parts[0]]
    return words


def _closed_compound_head(word: str, index: _VocabularyIndex) -> tuple[int, str] | None:
    """The right part of a closed compound whose two parts are both words ("goldfish" -> FISH).

    The longest such right part wins. Known misses of this rule: "hammerhead" -> HEAD,
    "diamondback" -> BACK.
    """
    for cut in range(_MIN_COMPOUND_MODIFIER, len(word) - _MIN_COMPOUND_HEAD + 1):
        left, right = word[:cut], word[cut:]
        if left.isalpha() and index.find(left) and (found := index.find(right)):
            return found[0], "compound_head"
    return None


def _number_variants(words: list[str]) -> list[str]:
    """The phrase with its last word made singular or plural (each candidate form)."""
    *front, last = words
    return [" ".join([*front, form]) for form in [*singulars(last), *plurals(last)]]


def singulars(word: str) -> list[str]:
    """Candidate singular forms of an upper-case word, likeliest first; [] if it looks singular."""
    if word in _IRREGULAR_SINGULARS:
        return [_IRREGULAR_SINGULARS[word]]
    if len(word) < 3 or not word.endswith("S") or word.endswith(_SINGULAR_S_ENDINGS):
        return []
    if word.endswith("IES"):
        return [word[:-3] + "Y", word[:-1]]  # butterflies; cookies
    if word.endswith("VES"):
        return [word[:-3] + "F", word[:-3] + "FE", word[:-1]]  # leaves; knives; sleeves
    if word.endswith("ES") and word[:-2].endswith(_ES_STEM_ENDINGS):
        return [word[:-2], word[:-1]]  # boxes, potatoes; shoes (the vocabulary decides)
    return [word[:-1]]


def plurals(word: str) -> list[str]:
    """Candidate plural forms of an upper-case word ("jean" -> "JEANS", "potato" -> "POTATOES")."""
    if word in _IRREGULAR_PLURALS:
        return [_IRREGULAR_PLURALS[word]]
    if not word or not word[-1].isalpha():
        return []
    if word.endswith(_SIBILANT_ENDINGS):
        return [word + "ES"]
    if word.endswith("Y") and len(word) > 1 and word[-2] not in "AEIOU":
        return [word[:-1] + "IES"]
    if word.endswith("O"):
        return [word + "ES", word + "S"]
    return [word + "S"]
