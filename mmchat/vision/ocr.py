"""Reading the text in an image: PP-OCRv6 (detection, recognition) and PP-OCR's angle classifier,
run by RapidOCR on onnxruntime, with the ONNX files the rapidocr wheel carries.

Detection runs on the image scaled so its longer side is at most :data:`DET_LIMIT_SIDE`;
recognition reads each found line from the full-resolution image. An image larger than
:data:`MAX_OCR_SIDE` is scaled down first, so a huge picture costs bounded memory and time.
The found pieces are put in reading order: pieces whose heights overlap form a line, lines top to
bottom, pieces in a line left to right (a receipt's "TOTAL" and "EUR 6.70" become one line).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmchat import registry
from mmchat.cache import CHUNK_BYTES
from mmchat.errors import MMChatError
from mmchat.images import to_rgb

log = logging.getLogger(__name__)

MAX_OCR_SIDE = 4096  # px: a larger image is scaled down before OCR (10 000² px would be 300 MB as RGB)
DET_LIMIT_SIDE = 960  # px: the longer side text detection works at (measured: 0.4-2 s on 2 cores)
MIN_SCORE = 0.5  # recognition confidence below which a piece is dropped (RapidOCR's own default)
SAME_LINE_OVERLAP = 0.5  # fraction of the shorter piece's height two pieces must share to be one line


@dataclass(frozen=True)
class TextPiece:
    text: str
    score: float  # recognition confidence, 0..1
    top: float  # px, in the image as given
    bottom: float
    left: float


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
        spec = registry.get(name)
        if spec.role is not registry.Role.OCR:
            raise MMChatError(f"{name} is not an OCR model (it is a {spec.role.value} model).")
        det, rec, angle = spec.locate_parts()
        _check_sha256(spec, (det, rec, angle))
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise MMChatError(f"Text reading needs the rapidocr package, which does not import ({exc}).",
                              hint="Run the README's setup command again.") from None
        try:
            engine = RapidOCR(params={
                "Global.log_level": "error",
                "Det.model_path": str(det), "Rec.model_path": str(rec), "Cls.model_path": str(angle),
                "Det.limit_type": "max", "Det.limit_side_len": DET_LIMIT_SIDE,
                "Global.text_score": MIN_SCORE,
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


def _check_sha256(spec: registry.ModelSpec, files) -> None:
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
    if digest.hexdigest() != spec.sha256:
        raise MMChatError(f"The OCR model files of {spec.name} do not match their registry sha256 "
                          "(a corrupt or different rapidocr package).",
                          hint="Reinstall the model packages: the README's setup command does this.")


def _pieces(result) -> list[TextPiece]:
    boxes = getattr(result, "boxes", None)
    texts = getattr(result, "txts", None)
    scores = getattr(result, "scores", None)
    if boxes is None or texts is None:
        return []
    pieces = []
    for box, text, score in zip(boxes, texts, scores):
        text = " ".join(str(text).split())
        if not text:
            continue
        ys, xs = np.asarray(box)[:, 1], np.asarray(box)[:, 0]
        pieces.append(TextPiece(text, float(score), float(ys.min()), float(ys.max()), float(xs.min())))
    return pieces


def reading_order(pieces: Sequence[TextPiece]) -> tuple[str, ...]:
    """Lines of text, top to bottom; pieces that share most of their height are one line, left to right."""
    lines: list[list[TextPiece]] = []
    for piece in sorted(pieces, key=lambda p: (p.top + p.bottom) / 2):
        if lines and _same_line(lines[-1], piece):
            lines[-1].append(piece)
        else:
            lines.append([piece])
    return tuple(" ".join(p.text for p in sorted(line, key=lambda p: p.left)) for line in lines)


def _same_line(line: list[TextPiece], piece: TextPiece) -> bool:
    top, bottom = min(p.top for p in line), max(p.bottom for p in line)
    shared = min(bottom, piece.bottom) - max(top, piece.top)
    shorter = min(bottom - top, piece.bottom - piece.top)
    return shorter > 0 and shared >= SAME_LINE_OVERLAP * shorter
