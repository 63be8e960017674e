"""The pictures `mmchat eval-vision` shows the shipped models, each with a question and what a
right reply must contain.

* **photos** — real photographs that packages bundle (no download): scikit-image's cat, coffee cup,
  rocket, ..., scikit-learn's temple and flower, matplotlib's portrait of Grace Hopper. Some are kept
  out of fusion training (``heldout``) and reported apart.
* **screenshots** — terminal errors, receipts, notices and dialog boxes rendered here in several
  fonts, sizes and colours, slightly rotated; the reply must reproduce a string exactly (an
  error name, an amount, a date, a room number).
* **drawings** — one filled shape, from a generator of its own (not the fusion training
  generator's): other shades, plain, gradient and paper backgrounds, other sizes and file
  formats (JPEG, WebP, GIF, BMP). The reply must name the colour, or the shape.

Every case is built from a seed, so a run is repeatable.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmchat.errors import MMChatError
from mmchat.images import load_image

WHAT_IS_IT = "What is in this picture?"
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf",
              "DejaVuSansCondensed.ttf")
MAX_ROTATION_DEG = 3.0  # screenshots are rotated by up to this much either way (a photo of a screen)


@dataclass(frozen=True)
class Case:
    set: str  # "photos" | "screenshots" | "drawings"
    name: str
    question: str
    expected: tuple[str, ...]  # the reply is right when it contains any of these
    exact: bool  # True: case-sensitive, as written (strings read from the picture); False: a word, any case
    split: str  # "heldout" or "train" (photos that fusion training may use)
    make: Callable[[], Image.Image]
    kind: str = ""  # e.g. "error name", "colour"

    def image(self) -> Image.Image:
        return self.make()


# -- photos ---------------------------------------------------------------------------------------
# (name, loader: a skimage.data function or "package:path" of a file in a package, words a right
# answer uses, split). The held-out photos are the ones of everyday things; the others (textures,
# scientific images, a silhouette) may be used by fusion training, and are reported apart.
PHOTOS = (
    ("china", "sklearn:datasets/images/china.jpg", ("temple", "palace", "pagoda", "monastery", "building"),
     "heldout"),
    ("flower", "sklearn:datasets/images/flower.jpg", ("flower", "daisy"), "heldout"),
    ("grace_hopper", "matplotlib:mpl-data/sample_data/grace_hopper.jpg",
     ("person", "woman", "lady", "officer", "uniform"), "heldout"),
    ("chelsea", "chelsea", ("cat", "kitten"), "heldout"),
    ("coffee", "coffee", ("coffee", "espresso", "cup", "mug"), "heldout"),
    ("rocket", "rocket", ("rocket", "missile", "space shuttle", "spacecraft"), "heldout"),
    ("motorcycle", "stereo_motorcycle", ("motorcycle", "motorbike", "moped", "scooter"), "heldout"),
    ("camera", "camera", ("camera", "tripod", "photographer"), "heldout"),
    ("astronaut", "astronaut", ("astronaut", "person", "woman", "man", "people", "human"), "heldout"),
    ("horse", "horse", ("horse",), "train"),
    ("coins", "coins", ("coin",), "train"),
    ("moon", "moon", ("moon",), "train"),
    ("hubble_deep_field", "hubble_deep_field", ("galaxy", "galaxies", "star", "space"), "train"),
    ("brick", "brick", ("brick", "wall"), "train"),
    ("grass", "grass", ("grass",), "train"),
    ("gravel", "gravel", ("gravel", "stone", "pebble", "rock"), "train"),
    ("retina", "retina", ("retina", "eye"), "train"),
    ("clock", "clock", ("clock",), "train"),
)


def load_photo(loader: str) -> Image.Image:
    """A photo of :data:`PHOTOS` by its loader, through the app's own image loader."""
    if ":" in loader:
        return _package_photo(*loader.split(":", 1))
    try:
        from skimage import data
    except ImportError:
        raise MMChatError("The photo set needs scikit-image, whose bundled photos it shows the models.",
                          hint="Install it with: pip install 'mmchat[eval]' (the test setup has it).") from None
    pixels = getattr(data, loader)()
    if loader == "stereo_motorcycle":
        pixels = pixels[0]
    image = Image.fromarray(np.asarray(pixels))
    return load_image(_png(image))  # through the app's own loader, as a dropped file would go


def _package_photo(package: str, path: str) -> Image.Image:
    """A photo file inside an installed package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MMChatError(f"The photo set needs the {package} package, which ships one of its photos.",
                          hint="Install it with: pip install 'mmchat[eval]' (the test setup has it).")
    return load_image(Path(next(iter(spec.submodule_search_locations))) / path)


def cases_photos_in_training() -> set[str]:
    """The photos fusion training may use (:mod:`mmchat.fusion_data.photos`); the rest are held out."""
    return {name for name, _, _, split in PHOTOS if split == "train"}


def photos() -> list[Case]:
    return [Case("photos", name, WHAT_IS_IT, words, False, split, lambda loader=loader: load_photo(loader),
                 "object") for name, loader, words, split in PHOTOS]


# -- screenshots ----------------------------------------------------------------------------------
ERRORS = (
    ("FileNotFoundError", "[Errno 2] No such file or directory: 'data/report_2026.csv'"),
    ("KeyError", "'customer_id'"),
    ("ZeroDivisionError", "division by zero"),
    ("ModuleNotFoundError", "No module named 'yaml'"),
    ("JSONDecodeError", "Expecting value: line 1 column 1 (char 0)"),
    ("PermissionError", "[Errno 13] Permission denied: '/var/log/app.log'"),
    ("TypeError", "unsupported operand type(s) for +: 'int' and 'str'"),
    ("IndexError", "list index out of range"),
)
SHOPS = ("GREEN LEAF CAFE", "CORNER BAKERY", "CITY PHARMACY", "BOOKS & MORE", "FRESH MARKET")
ITEMS = (("Flat white", 380), ("Croissant", 290), ("Bread", 345), ("Tea", 250), ("Notebook", 1299),
         ("Apples 1kg", 420), ("Soap", 199), ("Pen", 150))
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
# (title, message, question, the string to reproduce): dialog boxes a user would screenshot and ask about.
DIALOGS = (
    ("Connection failed", "Could not reach the server at 192.168.4.20 (port 8443).",
     "Which server address could not be reached?", "192.168.4.20"),
    ("Disk almost full", "Only 512 MB left on drive C:. Free up space to continue.",
     "How much space is left, according to this dialog?", "512 MB"),
    ("Update available", "Version 4.12.3 is ready to install.", "Which version is ready to install?", "4.12.3"),
    ("Sign-in error", "Error code 0x80070005: access denied.", "What is the error code in this dialog?",
     "0x80070005"),
)
# (light-on-dark or dark-on-light) text, background, accent
PALETTES = (((20, 20, 20), (250, 250, 248), (200, 30, 30)), ((230, 230, 230), (30, 32, 36), (255, 120, 100)),
            ((10, 30, 90), (235, 242, 255), (180, 20, 60)), ((40, 40, 40), (255, 250, 220), (160, 60, 0)),
            ((200, 255, 200), (0, 0, 0), (255, 255, 0)))
CANVASES = ((800, 600), (1024, 768), (1280, 720), (1920, 1080), (640, 480))


def _font(rng: np.random.Generator, size: int, *, mono: bool = False) -> ImageFont.ImageFont:
    """A TrueType font: DejaVu (Debian's fonts-dejavu-core) when installed, else Pillow's own."""
    names = ("DejaVuSansMono.ttf",) if mono else FONT_FILES
    for directory in FONT_DIRS:
        path = directory / names[int(rng.integers(len(names)))]
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _page(rng: np.random.Generator, lines: list[tuple[str, bool]], *, mono: bool = False,
          size: tuple[int, int] | None = None) -> Image.Image:
    """Lines of text (bool: in the accent colour) on a canvas (``size``, else a random one), slightly rotated."""
    width, height = size or CANVASES[int(rng.integers(len(CANVASES)))]
    ink, paper, accent = PALETTES[int(rng.integers(len(PALETTES)))]
    size = int(rng.integers(16, 29))
    font = _font(rng, size, mono=mono)
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    for text, highlighted in lines:
        draw.text((x, y), text, font=font, fill=accent if highlighted else ink)
        y += int(size * 1.5)
    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=paper)


def _traceback(rng: np.random.Generator) -> tuple[Image.Image, str]:
    name, message = ERRORS[int(rng.integers(len(ERRORS)))]
    qualified = "json.decoder.JSONDecodeError" if name == "JSONDecodeError" else name
    module = ("app", "report", "loader", "cli")[int(rng.integers(4))]
    lines = [("$ python " + module + ".py", False), ("Traceback (most recent call last):", False),
             (f'  File "/home/ada/project/{module}.py", line {int(rng.integers(10, 400))}, in <module>', False),
             ("    main()", False),
             (f'  File "/home/ada/project/{module}.py", line {int(rng.integers(10, 400))}, in main', False),
             ("    result = process(rows)", False), (f"{qualified}: {message}", True)]
    return _page(rng, lines, mono=True), name


def _receipt(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    chosen = rng.choice(len(ITEMS), size=int(rng.integers(2, 5)), replace=False)
    items = [ITEMS[int(i)] for i in chosen]
    total = sum(cents for _, cents in items)
    day, month = int(rng.integers(1, 29)), int(rng.integers(1, 13))
    date = f"{day:02d}/{month:02d}/2026"
    lines = [(SHOPS[int(rng.integers(len(SHOPS)))], True), (f"{int(rng.integers(1, 99))} Market Street", False),
             (f"Date: {date}   Time: {int(rng.integers(8, 20)):02d}:{int(rng.integers(60)):02d}", False)]
    lines += [(f"{name:<14}{cents / 100:>8.2f}", False) for name, cents in items]
    lines += [(f"{'TOTAL EUR':<14}{total / 100:>8.2f}", True), ("Thank you for your visit!", False)]
    return _page(rng, lines, mono=True), f"{total / 100:.2f}", date


def _notice(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    room = f"{int(rng.integers(1, 6))}{int(rng.integers(0, 3))}{int(rng.integers(0, 10))}"
    day, month = DAYS[int(rng.integers(len(DAYS)))], MONTHS[int(rng.integers(len(MONTHS)))]
    date = f"{day} {int(rng.integers(1, 29))} {month}"
    lines = [("NOTICE", True), (f"The lift is out of service until {date}.", False),
             (f"The meeting has moved to room {room}.", False), ("Thank you for your patience.", False)]
    return _page(rng, lines), room, date


def _dialog(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    title, message, question, wanted = DIALOGS[int(rng.integers(len(DIALOGS)))]
    width, height = CANVASES[int(rng.integers(len(CANVASES)))]
    ink, paper, accent = PALETTES[int(rng.integers(len(PALETTES)))]
    size = int(rng.integers(16, 25))
    font, bold = _font(rng, size), _font(rng, size + 2)
    image = Image.new("RGB", (width, height), tuple(int(c * 0.6) for c in paper))  # the dimmed window behind
    draw = ImageDraw.Draw(image)
    box_w = min(width - 40, int(draw.textlength(message, font=font)) + 80)
    box_h = size * 8
    left, top = (width - box_w) // 2, (height - box_h) // 2
    draw.rounded_rectangle((left, top, left + box_w, top + box_h), radius=10, fill=paper, outline=accent, width=2)
    draw.text((left + 30, top + 20), title, font=bold, fill=accent)
    draw.text((left + 30, top + 30 + int(size * 1.8)), message, font=font, fill=ink)
    for i, label in enumerate(("Cancel", "OK")):
        bx = left + box_w - (i + 1) * (size * 6)
        draw.rounded_rectangle((bx, top + box_h - size * 2 - 14, bx + size * 5, top + box_h - 14), radius=6,
                               outline=ink, width=1)
        draw.text((bx + size, top + box_h - size * 2 - 8), label, font=font, fill=ink)
    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    dimmed = tuple(int(c * 0.6) for c in paper)
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=dimmed), question, wanted


def screenshots(*, n: int = 24, seed: int = 0) -> list[Case]:
    """``n`` screenshot questions, cycling through errors, receipts (total, date), notices (room, date)
    and dialogs."""
    cases = []
    for i in range(n):
        kind = ("error", "receipt total", "notice room", "dialog", "receipt date", "notice date")[i % 6]
        rng = np.random.default_rng([seed, i])

        def make(kind=kind, rng_seed=(seed, i)):
            return _screenshot(kind, np.random.default_rng(rng_seed))[0]

        _, question, wanted = _screenshot(kind, rng)
        cases.append(Case("screenshots", f"{kind.replace(' ', '-')}-{i}", question, (wanted,), True, "heldout",
                          make, kind))
    return cases


def _screenshot(kind: str, rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    if kind == "error":
        image, name = _traceback(rng)
        return image, "Which error is shown in this screenshot?", name
    if kind.startswith("receipt"):
        image, total, date = _receipt(rng)
        if kind == "receipt total":
            return image, "What is the total on this receipt?", total
        return image, "What is the date on this receipt?", date
    if kind.startswith("notice"):
        image, room, date = _notice(rng)
        if kind == "notice room":
            return image, "Which room has the meeting moved to?", room
        return image, "Until when is the lift out of service?", date
    return _dialog(rng)


# -- drawings -------------------------------------------------------------------------------------
# Shades the fusion training generator never draws (mmchat.fusion_data.images.COLOURS are others).
DRAWING_COLOURS = {
    "red": ((180, 20, 50), (240, 70, 60), (150, 0, 0)),
    "green": ((0, 110, 40), (110, 200, 60), (34, 139, 34)),
    "blue": ((20, 40, 140), (60, 140, 235), (0, 90, 180)),
    "yellow": ((255, 230, 70), (225, 190, 0), (250, 240, 120)),
    "purple": ((95, 30, 140), (170, 90, 210), (120, 60, 160)),
    "orange": ((255, 110, 0), (230, 150, 50), (250, 125, 60)),
}
DRAWING_SHAPES = ("circle", "square", "triangle")
DRAWING_FORMATS = ("JPEG", "WEBP", "GIF", "BMP", "PNG")


def _drawing_background(rng: np.random.Generator, size: tuple[int, int], colour: str) -> Image.Image:
    """A plain pastel, a two-colour gradient or a paper texture, never close to the shape's colour."""
    width, height = size
    style = ("pastel", "gradient", "paper")[int(rng.integers(3))]
    pastels = [(240, 230, 250), (225, 245, 255), (255, 245, 230), (235, 250, 235), (250, 250, 250),
               (60, 60, 70), (245, 240, 225)]
    pastels = [p for p in pastels if not (colour == "yellow" and p[2] < 235 and p[0] > 240)]
    a = np.array(pastels[int(rng.integers(len(pastels)))], dtype=np.float32)
    if style == "pastel":
        return Image.new("RGB", size, tuple(int(c) for c in a))
    if style == "gradient":
        b = np.array(pastels[int(rng.integers(len(pastels)))], dtype=np.float32)
        t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        pixels = (a * (1 - t) + b * t) * np.ones((1, width, 1), dtype=np.float32)
    else:
        pixels = a + rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def drawing(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    colour = list(DRAWING_COLOURS)[int(rng.integers(len(DRAWING_COLOURS)))]
    shape = DRAWING_SHAPES[int(rng.integers(len(DRAWING_SHAPES)))]
    rgb = DRAWING_COLOURS[colour][int(rng.integers(3))]
    size = (int(rng.integers(160, 801)), int(rng.integers(160, 801)))
    image = _drawing_background(rng, size, colour)
    side = min(size)
    r = side * rng.uniform(0.18, 0.38)
    cx = rng.uniform(r + 4, size[0] - r - 4)
    cy = rng.uniform(r + 4, size[1] - r - 4)
    draw = ImageDraw.Draw(image)
    turn = math.radians(rng.uniform(-10, 10))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    else:
        corners = 4 if shape == "square" else 3
        radius = r if shape == "square" else r * 1.1
        start = (math.pi / 4 if shape == "square" else -math.pi / 2) + turn
        draw.polygon([(cx + radius * math.cos(start + 2 * math.pi * k / corners),
                       cy + radius * math.sin(start + 2 * math.pi * k / corners)) for k in range(corners)], fill=rgb)
    fmt = DRAWING_FORMATS[int(rng.integers(len(DRAWING_FORMATS)))]
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": int(rng.integers(40, 91))} if fmt in ("JPEG", "WEBP") else {}))
    return load_image(buffer.getvalue()), colour, shape


def drawings(*, n: int = 24, seed: int = 0) -> list[Case]:
    """``n`` drawings, each asked its colour and its shape (2 n cases)."""
    cases = []
    for i in range(n):
        def make(i=i):
            return drawing(np.random.default_rng([seed, 1000 + i]))[0]

        _, colour, shape = drawing(np.random.default_rng([seed, 1000 + i]))
        cases.append(Case("drawings", f"drawing-{i}-colour", "What colour is the shape?", (colour,), False, "heldout",
                          make, "colour"))
        cases.append(Case("drawings", f"drawing-{i}-shape", "What shape is it?", (shape,), False, "heldout",
                          make, "shape"))
    return cases


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SETS: dict[str, Callable[..., list[Case]]] = {
    "photos": lambda *, n, seed: photos(), "screenshots": screenshots, "drawings": drawings}
