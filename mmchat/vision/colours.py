"""The main colours of an image, by name, and which one is the background.

Each pixel of a small copy is named from its hue, saturation and value (HSV): black, grey and
white when it has little colour; otherwise red, orange, yellow, green, teal, blue, purple or pink,
with brown for dark orange-reds. Light and dark shades keep their colour's name ("light blue",
"dark green"), so a question about the colour is answered with the plain word either way. The
background is the colour that fills most of the border, when one does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmchat.images import to_rgb

SAMPLE_SIDE = 96  # px: colours are counted on a copy this small (fast, and enough for shares ≥ 3 %)
MIN_SHARE = 0.03  # colours covering less of the image are not reported
MAX_COLOURS = 4
BORDER_SHARE = 0.6  # the background must fill at least this much of the image's outer ring
# Hue boundaries (degrees, upper bounds, checked in order) of the chromatic names.
HUES = ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (195, "teal"), (255, "blue"),
        (290, "purple"), (335, "pink"), (360, "red"))
FLAT_COLOURS = 3  # a drawing: at most this many named colours ...
FLAT_COVERAGE = 0.97  # ... covering this much of the image (a photo's colours are spread wider)
GREY_SATURATION = 0.18  # below this a pixel has no colour of its own
BLACK_VALUE = 0.18  # darker than this is black whatever its hue


@dataclass(frozen=True)
class Colour:
    name: str  # e.g. "light blue"
    share: float  # 0..1 of the image's pixels


@dataclass(frozen=True)
class Palette:
    colours: tuple[Colour, ...]  # most common first
    background: str | None  # the name of the colour filling the border, if one does
    flat: bool = False  # a few flat colours on a background: a drawing, a diagram, clip art


def palette(image: Image.Image) -> Palette:
    small = to_rgb(image).copy()
    small.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.BOX)
    names = name_pixels(np.asarray(small, dtype=np.float32) / 255.0)
    values, counts = np.unique(names, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = names.size
    colours = tuple(Colour(str(values[i]), round(float(counts[i]) / total, 3)) for i in order
                    if counts[i] / total >= MIN_SHARE)[:MAX_COLOURS]
    border = np.concatenate([names[0], names[-1], names[1:-1, 0], names[1:-1, -1]])
    b_values, b_counts = np.unique(border, return_counts=True)
    top = int(np.argmax(b_counts))
    background = str(b_values[top]) if b_counts[top] >= BORDER_SHARE * border.size else None
    flat = background is not None and len(colours) <= FLAT_COLOURS and \
        sum(c.share for c in colours) >= FLAT_COVERAGE
    return Palette(colours, background, flat)


def name_pixels(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) RGB in [0, 1] → (h, w) array of colour names."""
    return NAMES[name_codes(rgb)]


def name_codes(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) RGB in [0, 1] → (h, w) indices into :data:`NAMES`.

    Codes, not strings: numpy's object-string steps held the GIL for 50 ms on a 256 × 192 copy, a
    stall the GUI thread felt (mmchat.vision.shapes names every pixel of one); this takes a few."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(-1)
    low = rgb.min(-1)
    chroma = value - low
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-6), 0.0)
    safe = np.maximum(chroma, 1e-6)
    hue = np.select(
        [value == r, value == g],
        [((g - b) / safe) % 6, (b - r) / safe + 2],
        (r - g) / safe + 4,
    ) * 60.0
    base = np.select([hue < upper for upper, _ in HUES], list(range(len(HUES))), 0)
    brown = (hue < 45) & (value < 0.6) & (saturation > 0.25)
    base = np.where(brown, len(HUES), base)
    shade = np.where((value > 0.8) & (saturation < 0.5), 1, np.where((value < 0.45) & ~brown, 2, 0))
    code = base * 3 + shade
    grey = len(_CHROMATIC) + np.where(value > 0.88, 0, np.where(value > 0.6, 1, 2))
    code = np.where(saturation < GREY_SATURATION, grey, code)
    return np.where(value < BLACK_VALUE, len(NAMES) - 1, code)


# What name_codes indexes: each hue's (and brown's) plain, light and dark shade, then the greys.
_CHROMATIC = [f"{shade}{name}" for name in [n for _, n in HUES] + ["brown"] for shade in ("", "light ", "dark ")]
NAMES = np.array(_CHROMATIC + ["white", "light grey", "grey", "black"])
