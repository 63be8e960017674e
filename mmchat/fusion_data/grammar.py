"""Template grammar of short spoken requests and transcripts, split into train and held-out.

Every utterance has the text to speak, a short answer that can be checked (for ``transcript``
the text itself), a kind and a template id. What the ``heldout`` split keeps to itself:

* whole templates (phrasings) marked held out below, with any fillers;
* held-out fillers, with any template: repeat words (:data:`REPEAT_WORDS_HELDOUT`), colour-fact
  things, opposite pairs, facts, and the ``my <relative> has a <adj> <animal>`` sentence frame;
  none of their words occurs anywhere in the train utterances (:data:`HELDOUT_VOCAB`);
* held-out combinations of seen words: arithmetic operand pairs with ``(3a + b) % 7 == 2``,
  numbers 7 and 14 in the number-sequence questions, Thursday and June in the day and month
  questions, transcripts with ``(animal + place) % 5 == 0`` or ``(colour + object) % 6 == 0``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
           "eighteen", "nineteen", "twenty")
MAX_OPERAND = 10
MAX_RESULT = 20

KINDS = ("transcript", "repeat", "colour_fact", "arithmetic", "sequence", "opposite", "fact")

REPEAT_TEMPLATES = (("say", "Say the word {}.", False), ("please", "Please say {}.", False),
                    ("repeat", "Repeat the word {}.", False),
                    ("can-you", "Can you say the word {}?", False),
                    ("could-you", "Could you say {} for me?", True))
REPEAT_WORDS = ("apple", "table", "river", "pencil", "garden", "window", "bottle", "candle",
                "mountain", "rabbit", "doctor", "summer", "button", "kitchen", "ladder", "monkey",
                "paper", "rocket", "turtle", "guitar", "island", "jacket", "music", "pillow",
                "planet", "robot", "sandwich", "tiger", "umbrella", "village", "water", "zebra",
                "basket", "camera", "castle", "dragon", "forest", "hammer", "mirror", "penguin")
REPEAT_WORDS_HELDOUT = ("blanket", "carpet", "engine", "feather", "helmet", "lantern", "marble",
                        "parrot", "saddle", "tunnel")

COLOUR_TEMPLATES = (("what-colour", "What colour is {}?", False),
                    ("colour-of", "What is the colour of {}?", False),
                    ("tell-me", "Tell me the colour of {}.", False),
                    ("which", "Which colour is {}?", True))
COLOUR_THINGS = (("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
                 ("a banana", "yellow"), ("a tomato", "red"), ("a lemon", "yellow"),
                 ("a carrot", "orange"), ("milk", "white"), ("a strawberry", "red"),
                 ("a leaf", "green"), ("the sea", "blue"), ("chocolate", "brown"),
                 ("a grape", "purple"), ("a crow", "black"), ("a cloud", "white"),
                 ("a cherry", "red"), ("a pumpkin", "orange"))
COLOUR_THINGS_HELDOUT = (("a frog", "green"), ("a lime", "green"), ("the sun", "yellow"),
                         ("an eggplant", "purple"), ("a flamingo", "pink"))

ARITHMETIC_TEMPLATES = (("plus", "What is {} plus {}?", "+", False),
                        ("add", "Add {} and {}.", "+", False),
                        ("minus", "What is {} minus {}?", "-", False),
                        ("times", "What is {} times {}?", "*", False),
                        ("how-much", "How much is {} plus {}?", "+", True))

SEQUENCE_NUMBER_TEMPLATES = (("after", "What number comes after {}?", 1, False),
                             ("before", "What number comes before {}?", -1, False),
                             ("follows", "Which number follows {}?", 1, True))
SEQUENCE_NUMBERS_HELDOUT = (7, 14)
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
DAYS_HELDOUT = ("thursday",)
MONTHS_HELDOUT = ("june",)

OPPOSITE_TEMPLATES = (("opposite-of", "What is the opposite of {}?", False),
                      ("tell-opposite", "Tell me the opposite of {}.", False),
                      ("means-opposite", "What word means the opposite of {}?", True))
OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"),
             ("happy", "sad"), ("wet", "dry"), ("light", "dark"), ("hard", "soft"),
             ("full", "empty"), ("early", "late"), ("loud", "quiet"), ("tall", "short"),
             ("left", "right"), ("black", "white"), ("yes", "no"), ("open", "closed"),
             ("first", "last"), ("win", "lose"), ("summer", "winter"))
OPPOSITES_HELDOUT = (("north", "south"), ("push", "pull"), ("thick", "thin"), ("rich", "poor"))

FACTS = (("moo", "Which animal says moo?", "cow"), ("meow", "Which animal says meow?", "cat"),
         ("bark", "Which animal barks?", "dog"), ("quack", "Which animal says quack?", "duck"),
         ("oink", "Which animal says oink?", "pig"), ("baa", "Which animal says baa?", "sheep"),
         ("neigh", "Which animal says neigh?", "horse"), ("roar", "Which animal roars?", "lion"),
         ("spider-legs", "How many legs does a spider have?", "eight"),
         ("week-days", "How many days are in a week?", "seven"),
         ("dog-legs", "How many legs does a dog have?", "four"),
         ("bicycle-wheels", "How many wheels does a bicycle have?", "two"),
         ("year-months", "How many months are in a year?", "twelve"),
         ("triangle-sides", "How many sides does a triangle have?", "three"),
         ("bees", "What do bees make?", "honey"), ("ice", "What is frozen water called?", "ice"),
         ("planet", "Which planet do we live on?", "earth"),
         ("puppy", "What do you call a baby dog?", "puppy"),
         ("kitten", "What do you call a baby cat?", "kitten"),
         ("france", "What is the capital of France?", "paris"),
         ("italy", "What is the capital of Italy?", "rome"),
         ("japan", "What is the capital of Japan?", "tokyo"),
         ("feet", "What do you wear on your feet?", "shoes"),
         ("sleep", "What do you sleep in at night?", "bed"))
FACTS_HELDOUT = (("hoot", "Which animal hoots?", "owl"), ("hiss", "Which animal hisses?", "snake"),
                 ("spain", "What is the capital of Spain?", "madrid"),
                 ("lamb", "What do you call a baby sheep?", "lamb"),
                 ("calf", "What do you call a baby cow?", "calf"),
                 ("octopus", "How many arms does an octopus have?", "eight"))

ADJECTIVES = ("small", "big", "little", "old", "happy", "brown", "white", "lazy")
ANIMALS = ("cat", "dog", "bird", "fox", "horse", "mouse", "cow", "duck")
VERBS = ("sat", "ran", "slept", "jumped", "walked", "played")
PLACES = ("on the mat", "in the garden", "by the river", "under the table", "near the house",
          "on the hill", "in the box")
I_VERBS = ("saw", "found", "bought", "wanted")
OBJECT_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
OBJECTS = ("ball", "car", "hat", "cup", "box", "kite", "book", "pen", "bag", "shoe")
CHORES = ("open", "close", "clean", "paint")
FIXTURES = ("door", "window", "box", "gate", "drawer", "cupboard")
RELATIVES_HELDOUT = ("brother", "sister", "friend", "uncle", "aunt", "cousin")


@dataclass(frozen=True)
class Utterance:
    text: str  # what is spoken
    answer: str  # the short expected reply; the text itself for transcripts
    kind: str
    template: str  # "<kind>/<template name>"
    heldout: bool


def _word_list(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(w for phrase in words for w in phrase.split())


HELDOUT_VOCAB = (_word_list(REPEAT_WORDS_HELDOUT)
                 | _word_list(tuple(t.split()[-1] for t, _ in COLOUR_THINGS_HELDOUT))
                 | _word_list(tuple(w for pair in OPPOSITES_HELDOUT for w in pair))
                 | frozenset({"owl", "snake", "madrid", "lamb", "calf", "octopus", "hoots",
                              "hisses", "spain"})
                 | frozenset(RELATIVES_HELDOUT))


def _repeat() -> list[Utterance]:
    words = [(w, False) for w in REPEAT_WORDS] + [(w, True) for w in REPEAT_WORDS_HELDOUT]
    return [Utterance(pattern.format(w), w, "repeat", f"repeat/{name}", held or w_held)
            for (name, pattern, held), (w, w_held) in itertools.product(REPEAT_TEMPLATES, words)]


def _colour_facts() -> list[Utterance]:
    things = [(t, False) for t in COLOUR_THINGS] + [(t, True) for t in COLOUR_THINGS_HELDOUT]
    out = []
    for (name, pattern, held), ((thing, colour), t_held) in itertools.product(COLOUR_TEMPLATES, things):
        text = pattern.format(thing)
        out.append(Utterance(text[0].upper() + text[1:], colour, "colour_fact",
                             f"colour_fact/{name}", held or t_held))
    return out


def _arithmetic() -> list[Utterance]:
    out = []
    for name, pattern, op, held in ARITHMETIC_TEMPLATES:
        for a, b in itertools.product(range(MAX_OPERAND + 1), repeat=2):
            result = {"+": a + b, "-": a - b, "*": a * b}[op]
            if not 0 <= result <= MAX_RESULT or (op == "*" and min(a, b) < 1):
                continue
            pair_held = (3 * a + b) % 7 == 2
            out.append(Utterance(pattern.format(NUMBERS[a], NUMBERS[b]), NUMBERS[result],
                                 "arithmetic", f"arithmetic/{name}", held or pair_held))
    return out


def _sequences() -> list[Utterance]:
    out = []
    for name, pattern, step, held in SEQUENCE_NUMBER_TEMPLATES:
        for n in range(len(NUMBERS)):
            if 0 <= n + step < len(NUMBERS):
                out.append(Utterance(pattern.format(NUMBERS[n]), NUMBERS[n + step], "sequence",
                                     f"sequence/{name}", held or n in SEQUENCE_NUMBERS_HELDOUT))
    for label, names, heldout in (("day", DAYS, DAYS_HELDOUT), ("month", MONTHS, MONTHS_HELDOUT)):
        for i, item in enumerate(names):
            out.append(Utterance(f"What {label} comes after {item.capitalize()}?",
                                 names[(i + 1) % len(names)], "sequence", f"sequence/{label}-after",
                                 item in heldout))
    return out


def _opposites() -> list[Utterance]:
    pairs = [(p, False) for p in OPPOSITES] + [(p, True) for p in OPPOSITES_HELDOUT]
    out = []
    for (name, pattern, held), ((a, b), p_held) in itertools.product(OPPOSITE_TEMPLATES, pairs):
        for word, answer in ((a, b), (b, a)):
            out.append(Utterance(pattern.format(word), answer, "opposite", f"opposite/{name}",
                                 held or p_held))
    return out


def _facts() -> list[Utterance]:
    return ([Utterance(q, a, "fact", f"fact/{name}", False) for name, q, a in FACTS]
            + [Utterance(q, a, "fact", f"fact/{name}", True) for name, q, a in FACTS_HELDOUT])


def _transcripts() -> list[Utterance]:
    out = []
    for adj, (ai, animal), verb, (pi, place) in itertools.product(
            ADJECTIVES, enumerate(ANIMALS), VERBS, enumerate(PLACES)):
        out.append(_sentence(f"the {adj} {animal} {verb} {place}", "the-animal",
                             (ai + pi) % 5 == 0))
    for verb, (ci, colour), (oi, obj) in itertools.product(
            I_VERBS, enumerate(OBJECT_COLOURS), enumerate(OBJECTS)):
        out.append(_sentence(f"I {verb} a {colour} {obj}", "i-saw", (ci + oi) % 6 == 0))
    for chore, fixture in itertools.product(CHORES, FIXTURES):
        out.append(_sentence(f"please {chore} the {fixture}", "please", False))
    for relative, adj, animal in itertools.product(RELATIVES_HELDOUT, ADJECTIVES, ANIMALS):
        out.append(_sentence(f"my {relative} has a {adj} {animal}", "my-relative", True))
    return out


def _sentence(words: str, template: str, heldout: bool) -> Utterance:
    text = words[0].upper() + words[1:] + "."
    return Utterance(text, text, "transcript", f"transcript/{template}", heldout)


@functools.cache
def all_utterances() -> tuple[Utterance, ...]:
    """Every utterance of the grammar, train and held-out, in a fixed order."""
    return tuple(_transcripts() + _repeat() + _colour_facts() + _arithmetic() + _sequences()
                 + _opposites() + _facts())


@functools.cache
def utterances(split: str) -> dict[str, tuple[Utterance, ...]]:
    """The utterances of ``split`` ("train" or "heldout"), by kind."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    want_heldout = split == "heldout"
    return {kind: tuple(u for u in all_utterances() if u.kind == kind and u.heldout == want_heldout)
            for kind in KINDS}


def words_of(text: str) -> set[str]:
    """Lower-case words of ``text`` without punctuation."""
    return {w.strip(".,?!:;'\"").lower() for w in text.split()} - {""}
