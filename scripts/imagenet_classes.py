#!/usr/bin/env python3
"""Write mmchat/vision/imagenet_classes.tsv: the 1000 ImageNet-1k classes in model output order.

Source: timm's ``timm/data/_info/imagenet_synsets.txt`` (the 1000 WordNet ids, sorted, which is the
order ImageNet-1k classifiers output) and ``imagenet_synset_to_lemma.txt`` (WordNet lemmas), both in
the timm wheel (Apache-2.0; the lemmas are WordNet's). Unzip those two files from a timm wheel and run:

    python scripts/imagenet_classes.py SYNSETS LEMMAS > mmchat/vision/imagenet_classes.tsv

Columns: index, WordNet id, name (the plainest lemma), other names (";"-separated, Latin binomials
dropped), kind (a common word for the class's group, e.g. "cat" for the five domestic cats; empty
for the object classes, whose names are already plain).
"""

import re
import sys

# Index ranges of ImageNet-1k's animal, food and scenery groups, with the word a person would use.
KINDS = (
    (0, 6, "fish"), (7, 24, "bird"), (25, 32, "amphibian"), (33, 37, "turtle"), (38, 48, "lizard"),
    (49, 50, "crocodile"), (51, 51, "dinosaur"), (52, 68, "snake"), (72, 77, "spider"), (80, 100, "bird"),
    (101, 101, "elephant"), (118, 121, "crab"), (122, 124, "lobster"), (127, 146, "bird"), (147, 148, "whale"),
    (151, 268, "dog"), (269, 271, "wolf"), (272, 275, "wild dog"), (277, 280, "fox"), (281, 285, "cat"),
    (286, 293, "big cat"), (294, 297, "bear"), (300, 320, "insect"), (321, 326, "butterfly"),
    (330, 332, "rabbit"), (333, 338, "rodent"), (339, 339, "horse"), (340, 340, "zebra"), (341, 343, "pig"),
    (345, 347, "cattle"), (348, 350, "sheep or goat"), (351, 353, "antelope"), (354, 354, "camel"),
    (365, 384, "monkey or ape"), (385, 386, "elephant"), (387, 388, "panda"), (389, 397, "fish"),
    (924, 935, "food"), (936, 945, "vegetable"), (947, 947, "mushroom"), (948, 957, "fruit"), (959, 965, "food"), (966, 967, "drink"),
    (969, 969, "drink"), (970, 970, "landscape"), (972, 980, "landscape"), (985, 986, "flower"), (991, 997, "mushroom"),
)
BINOMIAL = re.compile(r"^[A-Z][a-z]+ [a-z]+$")  # "Tinca tinca", "Carassius auratus"


def kind_of(index: int) -> str:
    return next((word for lo, hi, word in KINDS if lo <= index <= hi), "")


def names(lemmas: str) -> tuple[str, list[str]]:
    """(name, other names): a lemma that spells out the first one ("tabby" -> "tabby cat") is preferred."""
    parts = [p.strip() for p in lemmas.split(",") if p.strip()]
    parts = [parts[0]] + [p for p in parts[1:] if not BINOMIAL.match(p)]
    first = parts[0]
    fuller = next((p for p in parts[1:] if p.startswith(first + " ") and len(p.split()) <= 3), None)
    name = fuller or first
    return name, [p for p in parts if p != name]


def main(synsets_path: str, lemmas_path: str) -> None:
    synsets = open(synsets_path, encoding="utf-8").read().split()
    lemmas = dict(line.rstrip("\n").split("\t", 1) for line in open(lemmas_path, encoding="utf-8"))
    if len(synsets) != 1000:
        sys.exit(f"expected 1000 synsets, found {len(synsets)}")
    print("index\twordnet\tname\tother_names\tkind")
    for index, synset in enumerate(synsets):
        name, others = names(lemmas[synset])
        print(f"{index}\t{synset}\t{name}\t{';'.join(others)}\t{kind_of(index)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
