"""Loading untrusted images safely, as RGB.

Formats are allowed by *content* (the decoder Pillow identifies from the bytes, never the file
name): PNG, JPEG, WebP, GIF (first frame) and BMP. Size limits are checked before decoding: the
file size, then the pixel count from the header. EXIF orientation is applied, transparency is
composited onto white, and every other mode (palette, CMYK, 16-bit, grey + alpha) becomes RGB.
Anything unreadable raises :class:`MMChatError` naming the file.
"""

from __future__ import annotations

import codecs
import io
import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmchat.errors import MMChatError

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # bytes on disk / in memory
MAX_IMAGE_PIXELS = 64_000_000  # width × height, checked from the header before decoding
JPEG_DRAFT_SCALES = (2, 4, 8)  # a larger JPEG is decoded at the first of these reductions that fits
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # Pillow format names
BACKGROUND = (255, 255, 255)  # RGB that transparent pixels are composited onto

_SUPPORTED = "PNG, JPEG, WebP, GIF or BMP"

# Recognised but refused, for a clearer message than "unknown format": magic bytes -> name.
_REFUSED_MAGIC = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)

# What Pillow's decoders raise on malformed input (besides UnidentifiedImageError, an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                  TypeError, ZeroDivisionError)


_WARNINGS_LOCK = threading.Lock()


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into an RGB image, or raise MMChatError."""
    data, label = _read_source(source)
    if not data:
        raise MMChatError(f"{label} is empty (0 bytes), not an image.")
    try:
        # Pillow's bomb warning is dropped: our own limit, lower, is checked from the header before any
        # decoding (_open_checked); damaged-EXIF notes are dropped too. catch_warnings swaps
        # process-wide filters, hence the lock when threads decode at once.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # damaged metadata
            image = _open_checked(data, label)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except MMChatError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise _too_big(label, f"over {MAX_IMAGE_PIXELS:,} pixels") from None
    except _DECODE_ERRORS as exc:
        raise MMChatError(f"{label} could not be decoded: it is damaged or truncated ({exc}).",
                          hint=f"Use an intact {_SUPPORTED} file.") from None


def thumbnail(image: Image.Image, *, max_side: int) -> Image.Image:
    """A copy of ``image`` scaled down (never up) so neither side exceeds ``max_side`` pixels."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    small = image.copy()
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return small


def to_png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG (how the app stores attachments)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _read_source(source: str | os.PathLike | bytes) -> tuple[bytes, str]:
    """The raw bytes and a label for messages ("The image 'cat.png'")."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > MAX_IMAGE_BYTES:
            raise _too_big("The image", f"{len(data):,} bytes")
        return data, "The image"
    path = Path(source)
    label = f"The image '{path}'"
    try:
        if path.is_dir():
            raise MMChatError(f"{label} is a folder, not a file.")
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        raise MMChatError(f"{label} does not exist.") from None
    except PermissionError:
        raise MMChatError(f"{label} cannot be read (permission denied).") from None
    except OSError as exc:
        raise MMChatError(f"{label} cannot be read: {exc.strerror or exc}.") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_big(label, f"more than {MAX_IMAGE_BYTES:,} bytes")
    return data, label


def _open_checked(data: bytes, label: str) -> Image.Image:
    """Open lazily with only the allowed decoders and check the header's dimensions."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise MMChatError(f"{label} is {_describe_unknown(data)}, not a supported image.",
                          hint=f"Supported formats: {_SUPPORTED}.") from None
    if image.format not in ALLOWED_FORMATS:  # defensive: Pillow honours `formats`
        raise MMChatError(f"{label} is a {image.format} image, which is not supported.",
                          hint=f"Supported formats: {_SUPPORTED}.")
    width, height = image.size
    if width < 1 or height < 1:
        raise MMChatError(f"{label} has no pixels ({width}×{height}).")
    if width * height > MAX_IMAGE_PIXELS:
        # A JPEG decodes at 1/2, 1/4 or 1/8 scale for the same cost in memory as its smaller size
        # (a 10 000 × 10 000 scan arrives as 5000 × 5000); other formats must decode whole.
        scale = next((s for s in JPEG_DRAFT_SCALES if (width // s) * (height // s) <= MAX_IMAGE_PIXELS), None)
        if image.format != "JPEG" or scale is None:
            raise _too_big(label, f"{width}×{height} pixels")
        image.draft("RGB", (width // scale, height // scale))
        image.info["scaled_from"] = (width, height)
    return image


def _describe_unknown(data: bytes) -> str:
    head = data[:512]
    for magic, name in _REFUSED_MAGIC:
        if head.startswith(magic):
            return f"a {name} file"
    stripped = head.lstrip().lower()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "an SVG drawing"
    if head[4:8] == b"ftyp":
        return "a HEIC/AVIF/MP4 file"
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a cut last character is fine
    except UnicodeDecodeError:
        return "in an unknown format"
    return "a text file" if all(c.isprintable() or c in "\t\r\n" for c in text) else "in an unknown format"


def _too_big(label: str, what: str) -> MMChatError:
    return MMChatError(
        f"{label} is too large to open safely ({what}).",
        hint=f"mmchat accepts images up to {MAX_IMAGE_BYTES // (1024 * 1024)} MB and "
             f"{MAX_IMAGE_PIXELS:,} pixels; scale it down first.",
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB, compositing transparency onto :data:`BACKGROUND`."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit grey to 8-bit grey, scaling the full range (Pillow's convert would clip)."""
    values = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
    else:
        scaled = np.clip(values, 0, 65_535) / 257.0  # 16-bit range -> 8-bit range
    grey = Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8))
    if "transparency" in image.info:
        grey.info["transparency"] = int(image.info["transparency"]) // 257
    return grey
