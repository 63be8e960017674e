"""Procedural images for training and evaluating the fusion module.

Each image is a :class:`Scene` (background, 1-4 shapes or a written word) drawn with Pillow at
224×224. Shapes are large, flat and fully saturated on greyscale backgrounds, so the colour of a
shape is the colour of its saturated pixels, and shapes sit in one of five named regions so
position questions have one right answer. A scene knows its caption and its questions.

Held-out combinations (never drawn in the ``train`` split, see :func:`is_novel`): for every
(colour, shape) pair, one background, ``BACKGROUNDS[(colour_index + 2 * shape_index) % 5]``;
train still shows each pair on the other four backgrounds. The ``heldout`` split draws a
:attr:`ImageConfig.novel_fraction` share of its shape images with at least one held-out
combination (``meta["novel_combo"]``), the rest from seen combinations with new random draws.

Whole (colour, shape) pairs are *not* held out: a by-hand probe on seeded random-init CLIP patch
tokens (929 single-shape training images, per-token MLP) answered the shape of a never-seen pair
right 5% of the time (it learns "green is never a circle"), against 82% with every pair in
training; holding out one background per pair costs about 5 points on those triples. Stars
(:data:`EXTRA_SHAPES`) are off by default: at a 10% share the same probe named them 8-16% of the
time, and the acceptance evaluation asks about circle, square and triangle only. Rotation is
kept to ±8°: with stars off, the probe's held-out shape accuracy was 85% at ±8° and 68% at ±20°.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmchat.fusion_data.records import QA

CANVAS_PX = 224  # px, width and height of every image (CLIP's input size)
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then reduced, for smooth edges
CENTRE_PX = CANVAS_PX // 2
MARGIN_PX = 6  # px kept clear between a shape and the canvas edge

# ImageConfig.shades: the hue range (degrees) a colour name covers, and the values where it still does.
SHADE_HUES = {"red": (-10, 8), "orange": (20, 36), "yellow": (46, 58), "green": (85, 150), "blue": (200, 240),
              "purple": (265, 295)}
SHADE_VALUES = {"yellow": (0.8, 1.0), "orange": (0.75, 1.0), "red": (0.5, 1.0)}
# Named colours: base RGB, far apart in hue; each drawn shape jitters around its base.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 80, 215),
    "yellow": (245, 215, 30),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
}
CORE_SHAPES = ("circle", "square", "triangle")  # what the acceptance evaluation asks about
EXTRA_SHAPES = ("star",)
SHAPES = CORE_SHAPES + EXTRA_SHAPES
BACKGROUNDS = ("white", "grey", "stripes", "checker", "noise")
PLAIN_BACKGROUNDS = ("white", "grey")
BACKGROUND_PHRASES = {"white": "a white", "grey": "a light grey", "stripes": "a striped",
                      "checker": "a checked", "noise": "a speckled"}
POSITIONS = ("centre", "left", "right", "top", "bottom")
POSITION_PHRASES = {"centre": "in the centre", "left": "on the left", "right": "on the right",
                    "top": "at the top", "bottom": "at the bottom"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
WORDS = ("cat", "dog", "sun", "tree", "book", "fish", "car", "hat", "cup", "moon", "bird", "box")

# Farthest point of each shape from its centre, in units of its size ``r`` (see _outline).
EXTENT_PER_R = {"circle": 1.0, "square": 0.8 * math.sqrt(2), "triangle": 1.25, "star": 1.25}
SQUARE_HALF_SIDE = 0.8  # × r
TRIANGLE_CIRCUMRADIUS = 1.25  # × r
STAR_OUTER, STAR_INNER = 1.25, 0.45  # × r

# Single shapes: extent (px) by region; regions other than the centre keep the shape's centre at
# least OFFSET_MIN_PX from the middle along its axis and within ACROSS_MAX_PX across it.
CENTRE_EXTENT_PX = (45, 85)
SIDE_EXTENT_PX = (32, 50)
CENTRE_JITTER_PX = 10
OFFSET_MIN_PX = 40
ACROSS_MAX_PX = 20
# Several shapes: one per region at fixed anchors, small enough never to overlap.
MULTI_ANCHOR_OFFSET_PX = 60
MULTI_EXTENT_PX = (20, 25)
MULTI_JITTER_PX = 3

QUESTIONS = {
    "colour": ("What colour is the shape?", "What color is the shape?",
               "Which colour is the shape?", "What is the colour of the shape?"),
    "shape": ("What shape is it?", "What shape is this?", "Which shape is shown?",
              "What is the shape?"),
    "count": ("How many shapes are there?", "How many shapes are in the picture?",
              "Count the shapes."),
    "position": ("Where is the shape?", "Where is the shape in the picture?",
                 "Which part of the picture is the shape in?"),
    "word": ("What word is written?", "What does the text say?", "Read the word."),
}


@dataclass(frozen=True)
class ImageConfig:
    """Mix and variation of the generated images."""

    single_fraction: float = 0.62  # one large shape: these carry most colour/shape questions
    word_fraction: float = 0.08  # a written word; the rest are 2-4 shapes
    extra_shape_fraction: float = 0.0  # chance a shape is a star instead of a core shape
    textured_fraction: float = 0.4  # stripes/checker/noise instead of white/grey
    centre_fraction: float = 0.4  # single shapes in the centre (larger) vs the four sides
    single_count_question: float = 0.25  # chance a single-shape image also asks the count
    novel_fraction: float = 0.5  # heldout split only: share of shape images with a held-out combo
    max_rotation_deg: float = 8.0  # ± degrees; see the module docstring
    colour_jitter: int = 12  # ± per RGB channel
    word_font_px: tuple[int, int] = (40, 60)
    # Off in the CLIP recipe (its data stays byte-identical); on for the pretrained encoders', so the
    # projector meets each colour name in many shades and backgrounds that are not grey:
    shades: bool = False  # each shape's colour drawn around its name in HSV (SHADE_* ranges), not ±jitter
    tinted_fraction: float = 0.0  # chance a plain background is a pale tint ("a pale background")
    gradient_fraction: float = 0.0  # of those, the chance the tint fades into another pale tint
    zoom_out_fraction: float = 0.0  # chance the picture is shrunk onto its background (smaller shapes, as
    #                                 a tall or wide picture letterboxed into the encoder's square)
    reencode_fraction: float = 0.0  # chance the picture goes through JPEG or GIF (block and dither noise)


@dataclass(frozen=True)
class DrawnShape:
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    cx: float  # px
    cy: float  # px
    r: float  # px, size unit of the outline (circle radius)
    rotation_deg: float
    position: str

    @property
    def extent(self) -> float:
        return self.r * EXTENT_PER_R[self.shape]


@dataclass(frozen=True)
class Scene:
    background: str
    texture_seed: int  # drives stripe width, checker size and noise
    tint: tuple[int, int, int] | None = None  # a plain background's pale colour instead of white/grey
    tint_to: tuple[int, int, int] | None = None  # ... fading into this one, top to bottom
    shapes: tuple[DrawnShape, ...] = ()
    word: str | None = None
    word_font_px: int = 0
    word_xy: tuple[int, int] = (0, 0)  # px, centre of the text
    word_grey: int = 0
    novel_combo: bool = False


def is_novel(colour: str, shape: str, background: str) -> bool:
    """True for the combinations kept out of the train split (see the module docstring)."""
    ci, si = list(COLOURS).index(colour), SHAPES.index(shape)
    return background == BACKGROUNDS[(ci + 2 * si) % len(BACKGROUNDS)]


# --- sampling ---------------------------------------------------------------------------------

def sample_scene(rng: np.random.Generator, *, split: str, config: ImageConfig) -> Scene:
    """A random scene for ``split`` ("train" or "heldout")."""
    textured = rng.random() < config.textured_fraction
    pool = [b for b in BACKGROUNDS if (b not in PLAIN_BACKGROUNDS) == textured]
    background = str(rng.choice(pool))
    texture_seed = int(rng.integers(2**31))
    layout = rng.random()
    if layout < config.word_fraction:
        return _word_scene(rng, background, texture_seed, config)
    novel = split == "heldout" and rng.random() < config.novel_fraction
    n_shapes = 1 if layout < config.word_fraction + config.single_fraction else int(rng.integers(2, 5))
    kinds = _choose_kinds(rng, n_shapes, background=background, novel=novel, config=config)
    if n_shapes == 1:
        shapes = (_single_shape(rng, *kinds[0], config=config),)
    else:
        regions = rng.permutation(len(POSITIONS))[:n_shapes]
        shapes = tuple(_multi_shape(rng, c, s, POSITIONS[p], config=config)
                       for (c, s), p in zip(kinds, regions))
    tint = tint_to = None
    if config.tinted_fraction and background in PLAIN_BACKGROUNDS and rng.random() < config.tinted_fraction:
        tint = _pale(rng)
        if config.gradient_fraction and rng.random() < config.gradient_fraction:
            tint_to = _pale(rng)
    return Scene(background=background, texture_seed=texture_seed, shapes=shapes, novel_combo=novel, tint=tint,
                 tint_to=tint_to)


def _pale(rng: np.random.Generator) -> tuple[int, int, int]:
    """A pale tint of any hue (saturation ≤ 0.22, value ≥ 0.9): reads as a background, never as a colour name."""
    rgb = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(0.06, 0.22)), float(rng.uniform(0.9, 1.0)))
    return tuple(int(round(255 * v)) for v in rgb)


def _choose_kinds(rng: np.random.Generator, n: int, *, background: str, novel: bool,
                  config: ImageConfig) -> list[tuple[str, str]]:
    """(colour, shape) for n shapes, distinct pairs; one held-out pair first when ``novel``."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    allowed = [p for p in pairs if not is_novel(*p, background)]
    heldout = [p for p in pairs if is_novel(*p, background)]
    chosen: list[tuple[str, str]] = []
    if novel:
        chosen.append(_pick_pair(rng, heldout, config))
    while len(chosen) < n:
        pair = _pick_pair(rng, allowed if not novel else pairs, config)
        if pair not in chosen:
            chosen.append(pair)
    order = rng.permutation(n)
    return [chosen[i] for i in order]


def _pick_pair(rng: np.random.Generator, pool: list[tuple[str, str]],
               config: ImageConfig) -> tuple[str, str]:
    """A pair from ``pool``, with stars at ``extra_shape_fraction`` when the pool allows both."""
    extra = [p for p in pool if p[1] in EXTRA_SHAPES]
    core = [p for p in pool if p[1] in CORE_SHAPES]
    use_extra = extra and (not core or rng.random() < config.extra_shape_fraction)
    group = extra if use_extra else core
    return group[int(rng.integers(len(group)))]


def _jittered_rgb(rng: np.random.Generator, colour: str, config: ImageConfig) -> tuple[int, int, int]:
    if config.shades:
        return _shade(rng, colour)
    jitter = config.colour_jitter
    base = np.array(COLOURS[colour])
    rgb = np.clip(base + rng.integers(-jitter, jitter + 1, size=3), 0, 255)
    return tuple(int(v) for v in rgb)


def _single_shape(rng: np.random.Generator, colour: str, shape: str, *,
                  config: ImageConfig) -> DrawnShape:
    rotation = float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    if rng.random() < config.centre_fraction:
        position = "centre"
        extent = float(rng.uniform(*CENTRE_EXTENT_PX))
        cx, cy = CENTRE_PX + rng.uniform(-CENTRE_JITTER_PX, CENTRE_JITTER_PX, size=2)
    else:
        position = str(rng.choice(POSITIONS[1:]))
        extent = float(rng.uniform(*SIDE_EXTENT_PX))
        along = rng.uniform(extent + MARGIN_PX, CENTRE_PX - OFFSET_MIN_PX)  # distance from edge
        across = CENTRE_PX + rng.uniform(-ACROSS_MAX_PX, ACROSS_MAX_PX)
        far = CANVAS_PX - along
        cx, cy = {"left": (along, across), "right": (far, across),
                  "top": (across, along), "bottom": (across, far)}[position]
    return DrawnShape(shape=shape, colour=colour, rgb=_jittered_rgb(rng, colour, config),
                      cx=round(float(cx), 2), cy=round(float(cy), 2),
                      r=round(extent / EXTENT_PER_R[shape], 2), rotation_deg=round(rotation, 2),
                      position=position)


def _shade(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    """An RGB that a person would still call ``colour``: hue within its name's range, saturation and
    value within the name's (a dark orange is brown, a dark yellow olive, so those stay bright)."""
    low, high = SHADE_HUES[colour]
    hue = float(rng.uniform(low, high)) % 360 / 360
    value = float(rng.uniform(*SHADE_VALUES.get(colour, (0.45, 1.0))))
    rgb = colorsys.hsv_to_rgb(hue, float(rng.uniform(0.55, 1.0)), value)
    return tuple(int(round(255 * v)) for v in rgb)


def _multi_shape(rng: np.random.Generator, colour: str, shape: str, position: str, *,
                 config: ImageConfig) -> DrawnShape:
    dx, dy = {"centre": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1),
              "bottom": (0, 1)}[position]
    cx, cy = (CENTRE_PX + np.array([dx, dy]) * MULTI_ANCHOR_OFFSET_PX
              + rng.uniform(-MULTI_JITTER_PX, MULTI_JITTER_PX, size=2))
    extent = float(rng.uniform(*MULTI_EXTENT_PX))
    rotation = float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    return DrawnShape(shape=shape, colour=colour, rgb=_jittered_rgb(rng, colour, config),
                      cx=round(float(cx), 2), cy=round(float(cy), 2),
                      r=round(extent / EXTENT_PER_R[shape], 2), rotation_deg=round(rotation, 2),
                      position=position)


def _word_scene(rng: np.random.Generator, background: str, texture_seed: int,
                config: ImageConfig) -> Scene:
    word = str(rng.choice(WORDS))
    size = int(rng.integers(config.word_font_px[0], config.word_font_px[1] + 1))
    xy = (CENTRE_PX + int(rng.integers(-25, 26)), CENTRE_PX + int(rng.integers(-40, 41)))
    return Scene(background=background, texture_seed=texture_seed, word=word, word_font_px=size,
                 word_xy=xy, word_grey=int(rng.integers(0, 60)))


# --- drawing ----------------------------------------------------------------------------------

def render(scene: Scene) -> Image.Image:
    """The scene as a 224×224 RGB image."""
    if scene.tint is not None:
        top = np.array(scene.tint, dtype=np.float32)
        bottom = np.array(scene.tint_to or scene.tint, dtype=np.float32)
        fade = np.linspace(0, 1, CANVAS_PX, dtype=np.float32)[:, None, None]
        rows = top * (1 - fade) + bottom * fade
        image = Image.fromarray(np.repeat(rows, CANVAS_PX, axis=1).round().astype(np.uint8), "RGB")
    else:
        image = Image.fromarray(_background(scene.background, scene.texture_seed), "RGB")
    for shape in scene.shapes:
        image.paste(shape.rgb, (0, 0), _mask(shape))
    if scene.word:
        font = ImageFont.load_default(size=scene.word_font_px)
        grey = scene.word_grey
        ImageDraw.Draw(image).text(scene.word_xy, scene.word, fill=(grey, grey, grey), font=font,
                                   anchor="mm")
    return image


PLAIN_BORDER_STD = 4.0  # per channel: a background this even shows no edge when a picture is shrunk onto it


def finish(image: Image.Image, rng: np.random.Generator, *, config: ImageConfig) -> Image.Image:
    """The rendered picture as it is stored: shrunk onto its background, and through JPEG or GIF, as
    ``config`` says (draws nothing from ``rng`` when those are off, so other data stays as it was)."""
    zoom = config.zoom_out_fraction and rng.random() < config.zoom_out_fraction
    side = round(CANVAS_PX * float(rng.uniform(0.45, 0.9))) if zoom else CANVAS_PX
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.float32)
    if zoom and border.std(0).max() <= PLAIN_BORDER_STD:  # on stripes or a gradient the edge would show
        canvas = Image.new("RGB", image.size, tuple(int(v) for v in np.median(border, axis=0)))
        canvas.paste(image.resize((side, side), Image.Resampling.BICUBIC), ((CANVAS_PX - side) // 2,) * 2)
        image = canvas
    if config.reencode_fraction and rng.random() < config.reencode_fraction:
        buffer = io.BytesIO()
        if rng.random() < 0.5:
            image.save(buffer, format="JPEG", quality=int(rng.integers(35, 91)))
        else:
            image.save(buffer, format="GIF")
        image = Image.open(buffer).convert("RGB")
    return image


def _background(name: str, seed: int) -> np.ndarray:
    """Greyscale (so colourless) background as an RGB uint8 array."""
    rng = np.random.default_rng(seed)
    n = CANVAS_PX
    yy, xx = np.mgrid[0:n, 0:n]
    if name == "white":
        grey = np.full((n, n), int(rng.integers(248, 256)))
    elif name == "grey":
        grey = np.full((n, n), int(rng.integers(200, 226)))
    elif name == "stripes":
        width = int(rng.integers(8, 21))
        coord = [xx, yy, xx + yy, xx - yy][int(rng.integers(4))]
        grey = np.where((coord // width) % 2 == 0, 240, 205)
    elif name == "checker":
        cell = int(rng.integers(12, 29))
        grey = np.where(((xx // cell) + (yy // cell)) % 2 == 0, 240, 210)
    elif name == "noise":
        coarse = rng.normal(225.0, 14.0, size=(n // 4, n // 4))  # speckle 4 px across
        grey = np.kron(coarse, np.ones((4, 4)))
    else:
        raise ValueError(f"unknown background {name!r}")
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _outline(shape: DrawnShape) -> list[tuple[float, float]]:
    """Polygon vertices (px) of a square, triangle or star, rotated about its centre."""
    r = shape.r
    if shape.shape == "square":
        h = SQUARE_HALF_SIDE * r
        points = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape.shape == "triangle":
        big = TRIANGLE_CIRCUMRADIUS * r
        points = [(big * math.cos(a), big * math.sin(a))
                  for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape.shape == "star":
        points = []
        for k in range(10):
            radius = (STAR_OUTER if k % 2 == 0 else STAR_INNER) * r
            a = -math.pi / 2 + k * math.pi / 5
            points.append((radius * math.cos(a), radius * math.sin(a)))
    else:
        raise ValueError(f"{shape.shape!r} has no polygon outline")
    t = math.radians(shape.rotation_deg)
    cos, sin = math.cos(t), math.sin(t)
    return [(shape.cx + x * cos - y * sin, shape.cy + x * sin + y * cos) for x, y in points]


def _mask(shape: DrawnShape) -> Image.Image:
    """Anti-aliased coverage mask ("L") of one shape on the canvas."""
    s = SUPERSAMPLE
    big = Image.new("L", (CANVAS_PX * s, CANVAS_PX * s), 0)
    draw = ImageDraw.Draw(big)
    if shape.shape == "circle":
        box = [(shape.cx - shape.r) * s, (shape.cy - shape.r) * s,
               (shape.cx + shape.r) * s, (shape.cy + shape.r) * s]
        draw.ellipse(box, fill=255)
    else:
        draw.polygon([(x * s, y * s) for x, y in _outline(shape)], fill=255)
    return big.resize((CANVAS_PX, CANVAS_PX), Image.Resampling.BOX)


# --- language ---------------------------------------------------------------------------------

def caption(scene: Scene) -> str:
    """One sentence describing the scene, what matters first: a whole-image projector spells it into
    a fixed number of tokens (32 as shipped), so the end may be cut. A shape's colour is always the
    token after "a"/"an" and the shapes of a group follow "N shapes:" at the same place whatever the
    background; a four-shape caption fits in 31 tokens (background cut), where with the background
    first it took 36 and the last shape was cut."""
    bg = f"{'a pale' if scene.tint is not None else BACKGROUND_PHRASES[scene.background]} background"
    if scene.word:
        return f'the word "{scene.word}" written on {bg}'
    if len(scene.shapes) == 1:
        s = scene.shapes[0]
        return f"{_a(s.colour)} {s.shape} {POSITION_PHRASES[s.position]} of {bg}"
    parts = [f"{_a(s.colour)} {s.shape} {POSITION_PHRASES[s.position]}"
             for s in sorted(scene.shapes, key=lambda s: POSITIONS.index(s.position))]
    listed = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return f"{NUMBER_WORDS[len(scene.shapes)]} shapes: {listed}, on {bg}"


def _a(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def questions(scene: Scene, rng: np.random.Generator, *, config: ImageConfig) -> list[QA]:
    """Every question the scene answers in one word, phrasings chosen by ``rng``."""
    def ask(kind: str) -> str:
        options = QUESTIONS[kind]
        return options[int(rng.integers(len(options)))]

    if scene.word:
        return [QA(q=ask("word"), a=scene.word, kind="word")]
    shapes = scene.shapes
    if len(shapes) == 1:
        s = shapes[0]
        qa = [QA(q=ask("colour"), a=s.colour, kind="colour"),
              QA(q=ask("shape"), a=s.shape, kind="shape"),
              QA(q=ask("position"), a=s.position, kind="position")]
        if rng.random() < config.single_count_question:
            qa.append(QA(q=ask("count"), a="one", kind="count"))
        return qa
    # At most one question of each kind, so single shapes dominate colour and shape questions.
    candidates = {
        "colour": [QA(q=f"What colour is the {s.shape}?", a=s.colour, kind="colour")
                   for s in shapes if sum(o.shape == s.shape for o in shapes) == 1],
        "shape": [QA(q=f"What shape is the {s.colour} one?", a=s.shape, kind="shape")
                  for s in shapes if sum(o.colour == s.colour for o in shapes) == 1],
        "position": [QA(q=f"Where is the {s.colour} {s.shape}?", a=s.position, kind="position")
                     for s in shapes],
    }
    qa = [QA(q=ask("count"), a=NUMBER_WORDS[len(shapes)], kind="count")]
    for options in candidates.values():
        if options:
            qa.append(options[int(rng.integers(len(options)))])
    return qa


def difficulty(scene: Scene) -> int:
    """0 one large shape on a plain background, 1 any other single shape, 2 several, 3 a word."""
    if scene.word:
        return 3
    if len(scene.shapes) > 1:
        return 2
    plain_large = scene.background in PLAIN_BACKGROUNDS and scene.shapes[0].extent >= 45
    return 0 if plain_large else 1


def scene_meta(scene: Scene) -> dict:
    """JSON-ready description of what was drawn (for tests, evaluation and curricula)."""
    return {
        "background": scene.background,
        **({"tint": list(scene.tint)} if scene.tint is not None else {}),
        "count": len(scene.shapes),
        "shapes": [{"shape": s.shape, "colour": s.colour, "rgb": list(s.rgb), "position": s.position,
                    "cx": s.cx, "cy": s.cy, "r": s.r, "rotation_deg": s.rotation_deg}
                   for s in scene.shapes],
        "word": scene.word,
        "novel_combo": scene.novel_combo,
        "core": all(s.shape in CORE_SHAPES for s in scene.shapes),
        "difficulty": difficulty(scene),
    }
