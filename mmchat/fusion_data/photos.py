"""Real photographs for fusion training, and the dataset that mixes them with generated drawings.

A projector trained on drawings alone spells a drawing's caption for anything: shown the cat photo,
its tokens said "a shape circle at the top" and the 0.5B LLM repeated it (held-out photos answered
3 of 6 with fusion tokens, 5 of 6 without). Photos teach it to say "a photo" instead, and leave
naming what is in a photo to the classifier's evidence. The photos are scikit-image's bundled ones
that `mmchat eval-vision` keeps for training (``split == "train"``: textures, the moon, coins, ...;
not the horse, a flat silhouette) and its 200 small face photos (``lfw_subset``), each seen in many augmented
views: random crops, flips, slight turns, colour and contrast changes, grey, JPEG. The held-out
photos (the cat, the coffee, the rocket, ...) are never used.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mmchat.fusion_data import build_dataset
from mmchat.fusion_data.images import CANVAS_PX, ImageConfig
from mmchat.fusion_data.records import SAMPLES_FILE, Sample, load_samples, write_samples

log = logging.getLogger(__name__)

PHOTO_CAPTION = "a photo"
FACES = 60  # of lfw_subset's 200 faces, as sources
# The pretrained encoders' recipe: every colour name in many shades, a third of the plain
# backgrounds tinted (half of those fading into another tint), a third of the pictures shrunk onto
# their background and a quarter through JPEG or GIF.
VISION_IMAGE_CONFIG = ImageConfig(shades=True, tinted_fraction=0.35, gradient_fraction=0.5, zoom_out_fraction=0.35,
                                  reencode_fraction=0.25)


def photo_sources() -> list[Image.Image]:
    """The training photos: eval-vision's ``train`` photos and the first :data:`FACES` faces."""
    from skimage import data

    from mmchat.vision.eval_sets import PHOTOS, load_photo, cases_photos_in_training

    # The horse is a flat two-colour silhouette: as "a photo" it would teach that drawings are photos.
    allowed = cases_photos_in_training() - {"horse"}
    photos = [load_photo(loader) for name, loader, _, _ in PHOTOS if name in allowed]
    faces = data.lfw_subset()[:FACES]
    photos += [Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8)).convert("RGB") for f in faces]
    return photos


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random view of ``image``, CANVAS_PX square."""
    width, height = image.size
    area = float(rng.uniform(0.25, 1.0)) * width * height
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = int(min(width, round(np.sqrt(area * aspect))))
    h = int(min(height, round(np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    view = image.crop((left, top, left + w, top + h)).resize((CANVAS_PX, CANVAS_PX), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    angle = float(rng.uniform(-12, 12))
    inset = int(CANVAS_PX * 0.11)  # what a 12° turn leaves of the corners is cut away, not filled black
    view = view.rotate(angle, resample=Image.Resampling.BICUBIC).crop(
        (inset, inset, CANVAS_PX - inset, CANVAS_PX - inset)).resize((CANVAS_PX, CANVAS_PX), Image.Resampling.BICUBIC)
    if _is_grey(view) and rng.random() < 0.6:  # most sources are grey: give half their views colour
        dark = tuple(int(v) for v in rng.integers(0, 90, size=3))
        light = tuple(int(v) for v in rng.integers(165, 256, size=3))
        view = ImageOps.colorize(ImageOps.grayscale(view), black=dark, white=light)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhance(view).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.15:
        view = ImageOps.grayscale(view).convert("RGB")
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        view.save(buffer, format="JPEG", quality=int(rng.integers(50, 96)))
        view = Image.open(buffer).convert("RGB")
    return view


def _is_grey(image: Image.Image) -> bool:
    pixels = np.asarray(image, dtype=np.int16)
    return int(np.abs(pixels - pixels.mean(-1, keepdims=True)).max()) < 12


def build_photos(out_dir: Path, *, n: int, seed: int) -> Path:
    """``n`` augmented photo views in ``out_dir`` (images/ and samples.jsonl), reused when already built."""
    params = {"n": n, "seed": seed, "faces": FACES, "caption": PHOTO_CAPTION, "version": 2}
    if (out_dir / SAMPLES_FILE).is_file() and _built(out_dir) == params:
        return out_dir
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    sources = photo_sources()
    n_photos = len(sources) - FACES
    samples = []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        path = out_dir / "images" / f"photo-{i:05d}.png"
        # Half the views from the photos, half from the faces (60 faces would otherwise crowd out 9 photos).
        pool = range(n_photos) if rng.random() < 0.5 else range(n_photos, len(sources))
        augment(sources[int(rng.choice(pool))], rng).save(path)
        samples.append(Sample(id=f"photo-{i:05d}", modality="image", path=path, caption=PHOTO_CAPTION,
                              meta={"kind": "photo"}))
    write_samples(samples, out_dir)
    (out_dir / "build.json").write_text(json.dumps(params, sort_keys=True))
    return out_dir


def _built(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "build.json").read_text())
    except (OSError, ValueError):
        return None


def build_vision_dataset(root: Path, *, n_drawings: int, n_photos: int, n_speech: int, seed: int,
                         heldout_drawings: int = 240) -> tuple[Path, Path]:
    """(train, held-out) for a pretrained image encoder's projector: generated drawings in many shades
    (:data:`VISION_IMAGE_CONFIG`), augmented photos and generated clips (the same as the default
    dataset's for this seed) in ``root/train``; drawings only in the held-out split. Without
    scikit-image (it is in the test and eval extras) there are no photos, and the log says so."""
    parts = [build_dataset(root / "drawings", split="train", n_images=n_drawings, n_speech=0, seed=seed,
                           image_config=VISION_IMAGE_CONFIG)]
    heldout = build_dataset(root / "drawings", split="heldout", n_images=heldout_drawings, n_speech=0,
                            seed=seed, image_config=VISION_IMAGE_CONFIG)
    if n_photos and importlib.util.find_spec("skimage") is None:
        log.warning("scikit-image is not installed: the projector is trained without photos "
                    "(pip install 'mmchat[eval]' to add them)")
    elif n_photos:
        parts.append(build_photos(root / "photos", n=n_photos, seed=seed))
    if n_speech:
        parts.append(build_dataset(root / "speech", split="train", n_images=0, n_speech=n_speech, seed=seed))
    train = root / "train"
    train.mkdir(parents=True, exist_ok=True)
    mixed = [replace(s, path=s.path.resolve()) for part in parts for s in load_samples(part)]
    write_samples(mixed, train)
    return train, heldout
