"""Reading the text in an image: PP-OCRv6 text detection and recognition, run by RapidOCR on
onnxruntime, with the ONNX files the rapidocr wheel carries.

RapidOCR's upside-down classifier is off: measured on rendered notices, it turned a line of 30 px
text round and it was read as "anh no s u r prD", and on 16 screenshots with 96 lines it took
exact lines from 95 to 93. Screens and documents are rarely upside down; slight rotations are
read without it.

Detection runs on the image scaled so its longer side is at most :data:`DET_LIMIT_SIDE`;
recognition reads each found line from the full-resolution image. An image larger than
:data:`MAX_OCR_SIDE` is scaled down first, so a huge picture costs bounded memory and time.
The found pieces are put in reading order (:func:`reading_order`): lines top to bottom, pieces in
a line left to right (a receipt's "TOTAL" and "EUR 6.70" become one line).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmchat import registry
from mmchat.errors import MMChatError
from mmchat.images import to_rgb
from mmchat.vision import native

log = logging.getLogger(__name__)

# px: a larger image is scaled down before OCR (10 000² px would be 300 MB as RGB). RapidOCR would
# scale it to this itself (its Global.max_side_len), but only after copying it whole.
MAX_OCR_SIDE = 2000
DET_LIMIT_SIDE = 960  # px: the longer side text detection works at (measured: 0.4-2 s on 2 cores)
MIN_SCORE = 0.5  # recognition confidence below which a piece is dropped (RapidOCR's own default)
# ... and for a piece of one or two characters: in photos, an eye or a wheel was read as "0" at 0.53,
# where real short text (a page number, "OK") reads at 0.9 and above.
MIN_SHORT_SCORE = 0.8
_WORDLIKE = re.compile(r"[^\W_]")  # a letter or a digit, in any script
SAME_LINE = 0.5  # pieces whose centres are closer than this × the text's height (across the line) are one line


@dataclass(frozen=True)
class TextPiece:
    """One piece of text OCR found, where it is and how it lies."""

    text: str
    score: float  # recognition confidence, 0..1
    x: float  # px, its centre in the image as given
    y: float
    height: float  # px, across the text
    angle: float = 0.0  # radians, the slope of its baseline (clockwise, as image y points down)

    @classmethod
    def from_box(cls, text: str, score: float, box) -> TextPiece:
        """From a detection quad: top-left, top-right, bottom-right, bottom-left corners."""
        corners = np.asarray(box, dtype=np.float64).reshape(4, 2)
        (x0, y0), (x1, y1) = corners[0], corners[1]
        height = (np.linalg.norm(corners[3] - corners[0]) + np.linalg.norm(corners[2] - corners[1])) / 2
        cx, cy = corners.mean(0)
        return cls(text, score, float(cx), float(cy), float(height), float(math.atan2(y1 - y0, x1 - x0)))


@dataclass(frozen=True)
class TextReading:
    """The text found in one image."""

    lines: tuple[str, ...]  # in reading order
    seconds: float
    scaled_from: tuple[int, int] | None = None  # the original size, when it was scaled down first


class TextReader:
    """One loaded OCR pipeline; :meth:`read` may be called from any thread (one image at a time)."""

    def __init__(self, engine, *, name: str) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.name = name

    @classmethod
    def load(cls, name: str) -> TextReader:
        det, rec = registry.get(name).verified_parts(registry.Role.OCR)
        try:
            for library in ("cv2", "onnxruntime"):  # what rapidocr imports, the slow part cached first
                native.import_cached(library)
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise MMChatError(f"Text reading needs the rapidocr package, which does not import ({exc}).",
                              hint="Run the README's setup command again.") from None
        try:
            engine = RapidOCR(params={
                "Global.log_level": "error",
                "Det.model_path": str(det), "Rec.model_path": str(rec), "Global.use_cls": False,
                "Det.limit_type": "max", "Det.limit_side_len": DET_LIMIT_SIDE,
                "Global.text_score": MIN_SCORE, "Global.max_side_len": MAX_OCR_SIDE,
            })
        except Exception as exc:  # onnxruntime's session errors have no common base class
            raise MMChatError(f"The OCR model could not be loaded ({type(exc).__name__}: {exc}).",
                              hint="Reinstall the model packages: the README's setup command does this.") from None
        return cls(engine, name=name)

    @property
    def status(self) -> str:
        return f"{self.name} (pretrained, reads text in images)"

    def read(self, image: Image.Image) -> TextReading:
        started = time.monotonic()
        image = to_rgb(image)
        scaled_from = None
        if max(image.size) > MAX_OCR_SIDE:
            scaled_from = image.size
            image = image.copy()
            image.thumbnail((MAX_OCR_SIDE, MAX_OCR_SIDE), Image.Resampling.LANCZOS)
        pixels = np.asarray(image)[:, :, ::-1]  # RapidOCR works in OpenCV's BGR order
        with self._lock:
            result = self._engine(np.ascontiguousarray(pixels))
        pieces = _pieces(result)
        return TextReading(reading_order(pieces), round(time.monotonic() - started, 3), scaled_from)


def _pieces(result) -> list[TextPiece]:
    boxes = getattr(result, "boxes", None)
    texts = getattr(result, "txts", None)
    scores = getattr(result, "scores", None)
    if boxes is None or texts is None:
        return []
    # A piece with no letter or digit is dropped: a drawn disc or square was read as "●" or "■".
    pieces = [TextPiece.from_box(" ".join(str(text).split()), float(score), box)
              for box, text, score in zip(boxes, texts, scores) if _WORDLIKE.search(str(text))]
    return [p for p in pieces if len(p.text) > 2 or p.score >= MIN_SHORT_SCORE]


def reading_order(pieces: Sequence[TextPiece]) -> tuple[str, ...]:
    """Lines of text, top to bottom, each left to right.

    The page's slant (the median baseline angle) is taken out first: on a screen photographed 3°
    off, a piece 300 px along its line sits 16 px lower, most of a line's height. Pieces whose
    centres are then within half a line's height of each other are one line."""
    if not pieces:
        return ()
    slant = float(np.median([p.angle for p in pieces]))
    cos, sin = math.cos(slant), math.sin(slant)
    placed = sorted(((p.x * cos + p.y * sin, -p.x * sin + p.y * cos, p) for p in pieces), key=lambda t: t[1])
    lines: list[list[tuple[float, float, TextPiece]]] = []
    for along, across, piece in placed:
        if lines:
            line = lines[-1]
            centre = sum(t[1] for t in line) / len(line)
            height = min(piece.height, min(t[2].height for t in line))
            if abs(across - centre) < SAME_LINE * height:
                line.append((along, across, piece))
                continue
        lines.append([(along, across, piece)])
    return tuple(" ".join(t[2].text for t in sorted(line, key=lambda t: t[0])) for line in lines)
