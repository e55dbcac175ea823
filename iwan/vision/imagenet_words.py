"""Hypernym words for ImageNet-1k classes whose own names are not norm words.

ImageNet's 1000 classes are ordered by WordNet id, so each WordNet subtree (the 118 dog breeds,
the domestic cats, the snakes) is one contiguous run of class indices. A run is named here by
its first and last class name, checked against the classifier's category list at use, and
gives its members the subtree's common word (DOG, CAT, SNAKE). Some single classes get a word
too, where the name's head noun misleads (an airliner is no LINER, a fire engine no ENGINE).

Within a run a class keeps its own name when that is itself a norm word (`exact`, `compound`,
`number` matches in iwan.vision.words: "lion", "goose"); the run's word replaces only the weaker
head-noun guesses and misses. A single-class entry always applies: it corrects a wrong sense.
"""

from __future__ import annotations

import numpy as np

from iwan.vision.words import WordMapping

# (first class, last class, candidate words: the first in the vocabulary is used)
RUNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("tench", "stingray", ("FISH",)),
    ("cock", "great grey owl", ("BIRD",)),
    ("European fire salamander", "axolotl", ("SALAMANDER", "LIZARD")),
    ("bullfrog", "tailed frog", ("FROG",)),
    ("loggerhead", "box turtle", ("TURTLE",)),
    ("banded gecko", "Komodo dragon", ("LIZARD",)),
    ("thunder snake", "sidewinder", ("SNAKE",)),
    ("black and gold garden spider", "wolf spider", ("SPIDER",)),
    ("black grouse", "black swan", ("BIRD",)),
    ("Dungeness crab", "king crab", ("CRAB",)),
    ("American lobster", "crayfish", ("LOBSTER",)),
    ("white stork", "albatross", ("BIRD",)),
    ("grey whale", "killer whale", ("WHALE",)),
    ("Chihuahua", "Mexican hairless", ("DOG",)),
    ("timber wolf", "red wolf", ("WOLF",)),
    ("dingo", "African hunting dog", ("DOG",)),
    ("red fox", "grey fox", ("FOX",)),
    ("tabby", "Egyptian cat", ("CAT",)),
    ("brown bear", "sloth bear", ("BEAR",)),
    ("tiger beetle", "weevil", ("BEETLE", "BUG")),
    ("admiral", "lycaenid", ("BUTTERFLY",)),
    ("wood rabbit", "Angora", ("RABBIT",)),
    ("hog", "warthog", ("PIG",)),
    ("hartebeest", "gazelle", ("ANTELOPE", "DEER")),
    ("orangutan", "squirrel monkey", ("MONKEY", "APE")),
    ("barracouta", "puffer", ("FISH",)),
    ("sorrel", "sorrel", ("HORSE",)),
    ("airliner", "airliner", ("AIRPLANE", "PLANE")),
    ("warplane", "warplane", ("AIRPLANE", "PLANE")),
    ("yawl", "yawl", ("BOAT",)),
    ("fireboat", "fireboat", ("BOAT",)),
    ("catamaran", "catamaran", ("BOAT",)),
    ("trimaran", "trimaran", ("BOAT",)),
    ("schooner", "schooner", ("SHIP", "BOAT")),
    ("wreck", "wreck", ("SHIP",)),
    ("aircraft carrier", "aircraft carrier", ("SHIP",)),
    ("fire engine", "fire engine", ("TRUCK",)),
    ("pickup", "pickup", ("TRUCK",)),
    ("moving van", "moving van", ("TRUCK", "VAN")),
    ("beach wagon", "beach wagon", ("CAR",)),
    ("cab", "cab", ("TAXI", "CAR")),
    ("convertible", "convertible", ("CAR",)),
    ("racer", "racer", ("CAR",)),
    ("Model T", "Model T", ("CAR",)),
    ("minivan", "minivan", ("VAN", "CAR")),
    ("amphibian", "amphibian", ("VEHICLE", "CAR")),
    ("thresher", "thresher", ("TRACTOR", "MACHINE")),
)
# Matches on the class's own name; hypernyms replace every other kind of match.
OWN_NAME_RULES = frozenset({"exact", "compound", "number"})


def with_hypernyms(mapping: WordMapping, vocabulary: list[str]) -> WordMapping:
    """`mapping` of ImageNet categories with the runs' words filled in (rule `hypernym`).

    Category lists that are not ImageNet's (no run's first and last names found in order)
    come back unchanged.
    """
    position = {name: i for i, name in enumerate(mapping.names)}
    upper = {w.upper(): i for i, w in reversed(list(enumerate(vocabulary)))}
    words, rules, ids = list(mapping.words), list(mapping.rules), mapping.word_ids.copy()
    for first, last, candidates in RUNS:
        start, stop = position.get(first), position.get(last)
        word_id = next((upper[c] for c in candidates if c in upper), None)
        if start is None or stop is None or stop < start or word_id is None:
            continue
        for i in range(start, stop + 1):
            # A single-class entry is a deliberate correction, so it wins over the name itself.
            if rules[i] not in OWN_NAME_RULES or start == stop:
                words[i], rules[i], ids[i] = vocabulary[word_id], "hypernym", word_id
    return WordMapping(mapping.names, tuple(words), tuple(rules), np.asarray(ids, dtype=np.int64))
