"""What mmchat's local tools find in one image, as delimited data for the LLM.

For each image in a turn the model gets a block like::

    <image-data id=1>
    Image 1 (451 × 300 pixels), as mmchat's image tools describe it:
    The object classifier says it shows a cat (91 % sure): a tiger cat or an Egyptian cat or a tabby cat.
    Its main colours: brown, orange and light grey.
    No text was found in it.
    </image-data>

A screenshot or a page (OCR found text, the classifier is unsure) leads with the text instead.
Everything read from the image is data: OCR text is quoted line by line after ``| `` with the
chat template's markers and this block's own tags defused, and a line that reads like an
instruction to the model is given as reported speech (``| The picture says: "…"``). Measured with
Qwen2.5-0.5B on five pictures with an injected instruction, each asked three questions: the reply
obeyed 1 of 15 times that way, against 3 of 15 with a warning note after the line and 1 of 15, but
with the warning parroted in 12 replies, with a warning after the question. A 0.5B model can still be
talked round; the app shows the reply as text either way. Long text is cut with a note saying how
much is left out.
A tool that fails leaves its line out and says so (:attr:`ImageEvidence.problems`); the rest of
the evidence still reaches the model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from PIL import Image

from mmchat.errors import MMChatError
from mmchat.vision import colours, shapes
from mmchat.vision.features import Guess
from mmchat.vision.ocr import TextReading

log = logging.getLogger(__name__)

OPEN, CLOSE = "<image-data id={index}>", "</image-data>"
MAX_TEXT_CHARS = 1500  # OCR text per image given to the LLM (about 400 tokens); the rest is cut
MAX_TEXT_LINES = 60
UNSURE_BELOW = 0.35  # a best guess (with its group) less likely than this is reported as unsure
MIN_GUESS = 0.03  # guesses below this are left out
MOSTLY_TEXT_CHARS = 40  # OCR text this long makes an image a screenshot or page: its text leads
# Sequences that could end the block or pose as chat-template structure, and what they become.
_DEFUSE = ((re.compile(r"<\|"), "< |"), (re.compile(r"\|>"), "| >"),
           (re.compile(r"<(/?)(image-data|image|audio)", re.IGNORECASE), r"< \1\2"))
INSTRUCTION_REASONS = ("instruction override", "instruction", "role", "exfiltration")
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class ImageEvidence:
    index: int  # 1-based, within the conversation
    size: tuple[int, int]  # px
    guesses: tuple[Guess, ...] = ()
    recogniser: str = ""  # what made the guesses, e.g. "ImageNet classifier"
    palette: colours.Palette | None = None
    text: TextReading | None = None  # None: not read (no reader, or it failed)
    faces: int | None = None  # human faces found; None: not looked for
    drawn: shapes.Drawing | None = None  # the shapes of a drawing, by outline; None: not a drawing (or not looked)
    problems: tuple[str, ...] = field(default=())  # for the user: what could not be done

    def render(self) -> str:
        """The delimited block: a screenshot or page leads with its text, a drawing with its colours
        (an ImageNet guess about a drawing is a long shot), a photo with what the classifier says."""
        if self.mostly_text:
            body = self._text_first()
        elif self.drawing:
            body = self._colours_first()
        else:
            body = self._objects_first()
        return "\n".join([OPEN.format(index=self.index), *(line for line in body if line), CLOSE])

    @property
    def _size(self) -> str:
        return f"Image {self.index} ({self.size[0]} × {self.size[1]} pixels)"

    def _text_first(self) -> list[str]:
        # Plain words about the text, without the tools' names: with "mmchat's OCR read 4 lines ..."
        # first, Qwen 0.5B answered "What went wrong here?" about a traceback with "The OCR read 4
        # lines of text ..."; an unsure ImageNet guess ("an envelope, 4 % sure") was taken for the
        # answer to "What does this screenshot say?". A sure one (a menu, a book jacket) stays.
        return [f"{self._size} is a screenshot or a page of text.",
                describe_guesses(self.guesses) if self.recognised else "",
                *_text_lines(self.text, head="Its text ({n} line{s}, read by OCR, in reading order):"),
                *(f"The text shows an error: {name}." for name in errors_in(self.text.lines)),
                self._palette()]

    def _colours_first(self) -> list[str]:
        lines = [f"{self._size}, as mmchat's image tools describe it:",
                 *(describe_drawing(self.drawn) if self.drawn is not None else
                   [describe_palette(self.palette, drawing=True)])]
        if self.recogniser and self.unsure:
            lines.append(f"The object classifier recognises no everyday object in it (its best guess is only "
                         f"{_percent(self.guesses[0].probability)} sure).")
        elif self.recogniser:
            lines.append(describe_guesses(self.guesses))
        return lines + (_text_lines(self.text) if self.text is not None else [])

    def _objects_first(self) -> list[str]:
        lines = [f"{self._size}, as mmchat's image tools describe it:"]
        if self.faces:
            people = "a person" if self.faces == 1 else f"{self.faces} people"
            lines.append(f"It shows {people}: the face detector found {self.faces} human "
                         f"face{'s' if self.faces != 1 else ''} in it (the object classifier has no class for people).")
        if self.recogniser:
            lines.append(describe_guesses(self.guesses))
        return [*lines, self._palette(), *(_text_lines(self.text) if self.text is not None else [])]

    def _palette(self) -> str:
        return describe_palette(self.palette) if self.palette is not None and self.palette.colours else ""

    @property
    def unsure_guess(self) -> bool:
        return bool(self.recogniser) and _sureness(self.guesses) < UNSURE_BELOW

    @property
    def recognised(self) -> bool:
        """The classifier is sure what the picture shows (a photo of an everyday thing)."""
        return bool(self.recogniser) and not self.unsure_guess

    @property
    def unsure(self) -> bool:
        """The classifier named something, but is not sure of it (clip art, things outside ImageNet),
        and nothing else says what the picture is (its text, a face)."""
        return self.unsure_guess and not self.mostly_text and not self.faces

    @property
    def drawing(self) -> bool:
        """A few flat colours on a background, or shapes on a plain or graded one that the object
        classifier cannot name, and hardly any text: a drawing, a diagram, clip art."""
        return self.may_be_drawing and (self._flat or self.drawn is not None)

    @property
    def may_be_drawing(self) -> bool:
        """Whether outlines (``drawn``) could make it a drawing: it has no text, and either flat
        colours or no sure guess from the classifier."""
        return (self._flat or not self.recognised) and not self._text_chars

    @property
    def _flat(self) -> bool:
        return self.palette is not None and self.palette.flat

    @property
    def mostly_text(self) -> bool:
        """A screenshot, a page, a notice: OCR found lines of text (a few letters on a photo, a name
        badge or a shop sign, do not make one), and no face."""
        if self.faces:
            return False
        return self._text_chars >= MOSTLY_TEXT_CHARS or (bool(self._text_chars) and not self.recogniser)

    @property
    def _text_chars(self) -> int:
        return sum(len(escape_line(line)) for line in self.text.lines) if self.text is not None else 0


def gather(image: Image.Image, *, index: int, encoder=None, reader=None, face_finder=None,
           guesses: Sequence[Guess] | None = None) -> ImageEvidence:
    """Evidence about ``image`` from whichever tools are given; each failure is noted, not raised.

    ``guesses``: already made (e.g. with the fusion features, from one forward pass); otherwise
    ``encoder.recognise`` makes them. An encoder that cannot name things (a random init) gives none."""
    problems: list[str] = []
    recogniser = ""
    if guesses is None and encoder is not None:
        guesses = _attempt(lambda: encoder.recognise(image), "recognising objects", problems)
    if guesses:
        recogniser = recogniser_name(encoder)
    palette = _attempt(lambda: colours.palette(image), "measuring colours", problems)
    text = _attempt(lambda: reader.read(image), "reading text", problems) if reader is not None else None
    faces = _attempt(lambda: face_finder.count(image), "finding faces", problems) if face_finder is not None else None
    found = ImageEvidence(index, image.size, tuple(guesses or ()), recogniser, palette, text, faces)
    if found.may_be_drawing:  # not on a page of text or a sure photo: ~15 ms saved there
        found = replace(found, drawn=_attempt(lambda: shapes.find(image), "finding shapes", problems))
    return replace(found, problems=tuple(problems))


def recogniser_name(encoder) -> str:
    backend = getattr(encoder, "backend", "")
    if backend == "efficientnet-lite":
        return "ImageNet classifier"
    return "CLIP zero-shot over ImageNet's 1000 classes"


def _attempt(step, what: str, problems: list[str]):
    try:
        return step()
    except MMChatError as exc:
        problems.append(f"{what} failed: {str(exc).splitlines()[0]}")
    except Exception as exc:  # a tool's bug must not lose the turn: logged in full, said in one line
        log.exception("%s failed", what)
        problems.append(f"{what} failed ({type(exc).__name__}: {exc})")
    return None


def describe_guesses(guesses: Sequence[Guess]) -> str:
    """One sentence: what the classifier says the image shows, and how sure it is."""
    shown = [g for g in guesses if g.probability >= MIN_GUESS] or list(guesses[:1])
    if not shown:
        return "The object classifier recognised nothing in it."
    best, others = shown[0], shown[1:]
    sure = _sureness(guesses)
    rest = " or ".join(f"{_a(g.name)} ({_percent(g.probability)})" for g in others)
    if sure < UNSURE_BELOW:
        return (f"The object classifier is unsure what it shows: its best guess is {_a(best.name)}, only "
                f"{_percent(best.probability)} sure" + (f"; other guesses: {rest}." if rest else "."))
    if best.kind and sure > best.probability:
        kinds = " or ".join(_a(g.name) for g in shown if g.kind == best.kind)
        return f"The object classifier says it shows {_a(best.kind)} ({_percent(sure)} sure): {kinds}."
    return (f"The object classifier says it shows {_a(best.name)} ({_percent(best.probability)} sure)"
            + (f"; less likely: {rest}." if rest else "."))


def _sureness(guesses: Sequence[Guess]) -> float:
    """The best guess's probability, or its group's where the top guesses share a kind ("cat")."""
    if not guesses:
        return 0.0
    best = guesses[0]
    group = sum(g.probability for g in guesses if best.kind and g.kind == best.kind)
    return max(best.probability, group)


def describe_palette(palette: colours.Palette, *, drawing: bool = False) -> str:
    names = [c.name for c in palette.colours]
    if drawing and len(names) > 1:
        drawn = [n for n in names if n != palette.background]
        shapes = f"{_a(drawn[0])} shape" if len(drawn) == 1 else f"{_and(drawn)} shapes"
        return f"It looks like a flat drawing: {shapes} on a {palette.background} background."
    if palette.background in names and len(names) > 1:
        return f"Its colours: {_and([n for n in names if n != palette.background])} on a {palette.background} background."
    return f"Its main colours: {_and(names)}."


def describe_drawing(drawn: shapes.Drawing) -> list[str]:
    """The drawing's colours, then its shapes' outlines in a sentence of their own. Measured on 48
    drawings of eval-vision's generator asked "What shape is it?" (with fusion tokens, outlines
    found on flat drawings only): "a purple shape on a white background. The drawn shape is a
    circle." was answered right 42 times, "a flat drawing of a purple circle on a white background"
    39 times, "a purple circle on a white background" 32 times ("The shape of the image is a
    rectangle": the picture's own outline)."""
    tints = list(dict.fromkeys(s.colour for s in drawn.shapes))
    what = f"{_a(tints[0])} shape" if len(drawn.shapes) == 1 else f"{_and(tints)} shapes"
    if len(drawn.shapes) > 1:
        outlines = f"The drawn shapes: {describe_shapes(drawn.shapes)}."
    elif drawn.shapes[0].name == "shape":  # a silhouette, a logo: not "The drawn shape is a shape."
        outlines = "Its outline is no simple geometric shape (not a circle, triangle or square)."
    else:
        outlines = f"The drawn shape is {_a(drawn.shapes[0].name)}."
    return [f"It looks like a flat drawing: {what} on a {_and(drawn.background)} background.", outlines]


def describe_shapes(drawn: Sequence[shapes.Shape]) -> str:
    """"a red triangle", "2 blue circles and a green square": alike shapes counted, largest first."""
    counts: dict[tuple[str, str], int] = {}
    for shape in drawn:
        counts[shape.colour, shape.name] = counts.get((shape.colour, shape.name), 0) + 1
    return _and([_a(f"{colour} {name}") if n == 1 else f"{n} {colour} {name}s" for (colour, name), n in counts.items()])


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _text_lines(reading: TextReading, *,
                head: str = "mmchat's OCR read {n} line{s} of text from it, quoted in reading order:") -> list[str]:
    lines = [escape_line(line) for line in reading.lines]
    lines = [line for line in lines if line]
    if not lines:
        return ["No text was found in it."]
    kept, chars = [], 0
    for line in lines[:MAX_TEXT_LINES]:
        if chars + len(line) > MAX_TEXT_CHARS and kept:
            break
        kept.append(line[:MAX_TEXT_CHARS])
        chars += len(line)
    out = [head.format(n=len(lines), s="s" if len(lines) != 1 else ""),
           *(f'| The picture says: "{line}"' if is_instruction(line) else f"| {line}" for line in kept)]
    if len(kept) < len(lines):
        out.append(f"(the text goes on for {len(lines) - len(kept)} more lines, not shown here)")
    if reading.scaled_from is not None:
        out.append(f"(read from a copy scaled down from {reading.scaled_from[0]} × {reading.scaled_from[1]} pixels)")
    return out


# An exception's name where a traceback or a log names it: "FileNotFoundError: [Errno 2] ...",
# "Exception in thread "main" java.lang.NullPointerException", "Uncaught TypeError: x is undefined".
_ERROR_NAME = re.compile(r"(?<![\w.])((?:[A-Za-z_$][\w$]*\.)*[A-Z][\w$]*(?:Error|Exception))(?=:|\s*$)")
MAX_ERRORS = 2


def errors_in(lines: Sequence[str]) -> list[str]:
    """The error names in OCR lines, the last ones (a traceback's final line is its error), at most
    MAX_ERRORS, each once. Said apart from the quoted text: asked about a traceback three ways, each
    with and without a photo earlier in the conversation, Qwen 0.5B named the error in 4 of 6
    replies with this line (and the wording of :meth:`ImageEvidence._text_first`), in 0 of 6 with
    neither."""
    names: list[str] = []
    for line in reversed(lines):
        for name in reversed(_ERROR_NAME.findall(line)):
            if name not in names:
                names.append(name)
    return names[:MAX_ERRORS][::-1]


def is_instruction(line: str) -> bool:
    """The line reads like an instruction to the model (the memory store's hostile-text patterns)."""
    from mmchat.memory import hostile_reasons

    return any(reason in INSTRUCTION_REASONS for reason in hostile_reasons(line))


def escape_line(text: str) -> str:
    """One OCR line, safe inside the block: one line, no chat-template markers, no block tags."""
    text = " ".join(_INVISIBLE.sub(" ", text).split())
    for pattern, replacement in _DEFUSE:
        text = pattern.sub(replacement, text)
    return text


def _percent(p: float) -> str:
    return f"{round(100 * p)} %"


def _a(words: str) -> str:
    return ("an " if words[:1].lower() in "aeiou" else "a ") + words
