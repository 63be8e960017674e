"""Seeing pictures: image encoders, text reading and the evidence an image turn gives the LLM.

* :mod:`~mmchat.vision.features` — what every encoder gives (features, fingerprint, guesses);
* :mod:`~mmchat.vision.efficientnet` — EfficientNet-Lite0 (ImageNet-1k), the offline default;
* :mod:`~mmchat.vision.clip` — CLIP ViT-B/32, the upgrade (fetched weights; a seeded random init
  until then);
* :mod:`~mmchat.vision.imagenet` — ImageNet's class names in plain words;
* :mod:`~mmchat.vision.colours` — dominant colours by name;
* :mod:`~mmchat.vision.ocr` — reading the text in an image (PP-OCR through RapidOCR);
* :mod:`~mmchat.vision.evidence` — all of that about one image, as delimited data for the prompt.

Encoders are chosen by registry name; the registry entry's ``family`` picks the loader.
"""

from __future__ import annotations

from mmchat import registry
from mmchat.errors import MMChatError


def _load_efficientnet(spec: registry.ModelSpec):
    from mmchat.vision import efficientnet

    return efficientnet.load(spec)


def _load_clip(spec: registry.ModelSpec):
    from mmchat.vision import clip

    return clip.load_image_encoder(spec.name)


LOADERS = {"efficientnet": _load_efficientnet, "clip": _load_clip}


def load_image_encoder(name: str):
    """The image encoder registered as ``name`` (an :class:`~mmchat.vision.features.ImageEncoder`)."""
    spec = registry.get(name)
    if spec.role is not registry.Role.IMAGE:
        raise MMChatError(f"{name} is not an image encoder (it is a {spec.role.value} model).")
    family = spec.settings.get("family", "")
    try:
        loader = LOADERS[family]
    except KeyError:
        raise ValueError(f"{name}: unknown image encoder family {family!r}; known: {', '.join(LOADERS)}") from None
    return loader(spec)
