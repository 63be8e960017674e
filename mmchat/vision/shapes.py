"""The shapes in a drawing, by outline: circles, ovals, triangles, squares, rectangles, …

On a small copy each pixel gets its colour's name (colours.name_codes). Every region of one name
that reaches the image's edge is background (a gradient makes two or three); what is left is drawn
on it, and each connected part of that, if not too small, is a shape. A part's outline is judged by
its convex hull: how many corners a polygon fitted to it has (many: round), and how long it is
against how wide. The fusion projector learned outlines only from its own generator's drawings, and
the ImageNet classifier not at all; this measures them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmchat.images import to_rgb
from mmchat.vision import colours

SIDE = 256  # px: outlines are measured on a copy this small
MIN_SHARE = 0.01  # regions smaller than this share of the image are noise (JPEG edges, anti-aliasing)
MAX_SHAPES = 4
EVEN = 1.2  # a side ratio up to this is a circle, not an oval; a square, not a rectangle
# A polygon fitted to the outline may stray this share of the perimeter from it: at FINE a circle
# keeps 8 or more corners and a hexagon its 6; at COARSE a square's slightly rounded corners
# (JPEG, anti-aliasing, the small copy) count once each.
FINE, COARSE = 0.015, 0.04
ROUND_CORNERS = 7  # this many corners at FINE: a circle or an oval
SOLID = 0.9  # a region filling less of its hull than this is not convex: its outline is not named
POLYGONS = {3: "triangle", 5: "pentagon", 6: "hexagon"}
STRAY = 0.05  # a drawing: at most this share of it is neither background nor a shape ...
MAX_BACKGROUND = 3  # ... and its background has at most this many colours (a gradient has 2 or 3)


@dataclass(frozen=True)
class Shape:
    name: str  # "circle", "oval", "triangle", "square", "rectangle", "pentagon", "hexagon" or "shape"
    colour: str  # its colour's name (colours.NAMES)
    share: float  # of the image's area


@dataclass(frozen=True)
class Drawing:
    shapes: tuple[Shape, ...]  # largest first, at most MAX_SHAPES
    background: tuple[str, ...]  # the colours reaching the image's edge, most common first
    stray: float  # share of the image in neither: specks, texture, detail


def find(image: Image.Image) -> Drawing | None:
    """The shapes drawn on the background, or None for a picture that is not a drawing (a photo:
    more than STRAY of it is neither background nor a shape, its background has more than
    MAX_BACKGROUND colours, or no shape is found)."""
    import cv2

    small = to_rgb(image).copy()
    small.thumbnail((SIDE, SIDE), Image.Resampling.BOX)
    codes = colours.name_codes(np.asarray(small, dtype=np.float32) / 255.0)
    # The background: every region of one colour name that reaches the edge (a gradient is several).
    # The rest is what is drawn on it, whole: a dark red shape's JPEG pixels may be named red or
    # brown, and named apart they made two ragged halves.
    ground = np.zeros(codes.shape, dtype=bool)
    background: dict[str, int] = {}
    for code in np.unique(codes):
        _, labels = cv2.connectedComponents((codes == code).astype(np.uint8), connectivity=4)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        if edge[-1] > 0:  # 0 is everything not of this colour
            touching = np.isin(labels, edge[edge > 0])
            ground |= touching
            background[str(colours.NAMES[code])] = int(touching.sum())
    drawn = cv2.morphologyEx((~ground).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(drawn, connectivity=8)
    found = []
    for label in range(1, count):
        area = int(stats[label][cv2.CC_STAT_AREA])
        if area >= MIN_SHARE * codes.size:
            region = labels == label
            colour = np.bincount(codes[region & ~ground]).argmax()  # its most common colour
            found.append(Shape(_outline(region.astype(np.uint8)), str(colours.NAMES[colour]),
                               round(area / codes.size, 3)))
    stray = 1 - (ground.sum() + sum(s.share for s in found) * codes.size) / codes.size
    if not found or stray > STRAY or len(background) > MAX_BACKGROUND:
        return None
    return Drawing(tuple(sorted(found, key=lambda s: -s.share)[:MAX_SHAPES]),
                   tuple(sorted(background, key=lambda c: -background[c])), round(max(0.0, float(stray)), 3))


def _outline(region: np.ndarray) -> str:
    import cv2

    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(contour)
    perimeter = cv2.arcLength(hull, True)
    hull_area = cv2.contourArea(hull)
    if perimeter <= 0 or hull_area <= 0 or float(region.sum()) < SOLID * hull_area:
        return "shape"
    (_, _), (a, b), _ = cv2.minAreaRect(hull)
    even = max(a, b) <= EVEN * min(a, b)
    if len(cv2.approxPolyDP(hull, FINE * perimeter, True)) >= ROUND_CORNERS:
        return "circle" if even else "oval"
    corners = len(cv2.approxPolyDP(hull, COARSE * perimeter, True))
    if corners == 4:
        return "square" if even else "rectangle"
    return POLYGONS.get(corners, "shape")
