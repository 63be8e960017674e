"""ImageNet-1k's 1000 classes in plain words, and the top guesses of a classifier over them.

The class list ships as data (``imagenet_classes.tsv``, written by ``scripts/imagenet_classes.py``
from WordNet's lemmas): for each class in model output order, its plainest name ("tabby cat"),
other names and, for animals, food and scenery, a common word for its group ("cat"), so that a
reply can say "a cat" where the classifier's best single class is only 38 % sure which cat.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from mmchat.vision.features import Guess

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
NUM_CLASSES = 1000


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # model output position
    wordnet: str  # WordNet synset id, e.g. "n02123045"
    name: str  # e.g. "tabby cat"
    other_names: tuple[str, ...]
    kind: str  # e.g. "cat"; "" for classes whose name is already plain


@functools.cache
def classes() -> tuple[ImageNetClass, ...]:
    rows = CLASSES_FILE.read_text(encoding="utf-8").splitlines()[1:]
    out = []
    for row in rows:
        index, wordnet, name, others, kind = row.split("\t")
        out.append(ImageNetClass(int(index), wordnet, name, tuple(o for o in others.split(";") if o), kind))
    if [c.index for c in out] != list(range(NUM_CLASSES)):
        raise RuntimeError(f"{CLASSES_FILE} does not list the {NUM_CLASSES} classes in order")
    return tuple(out)


def guesses(probabilities: torch.Tensor, *, top_k: int = 5) -> list[Guess]:
    """The ``top_k`` most likely classes of one image's (1000,) probabilities, as plain-word guesses."""
    if probabilities.shape != (NUM_CLASSES,):
        raise ValueError(f"expected ({NUM_CLASSES},) class probabilities, got {tuple(probabilities.shape)}")
    values, indices = probabilities.float().topk(top_k)
    table = classes()
    return [Guess(table[i].name, round(p, 4), table[i].kind) for p, i in zip(values.tolist(), indices.tolist())]
