"""What every image encoder gives: features for fusion, a fingerprint, and (where it can) names.

An encoder is chosen by registry name (:func:`mmchat.vision.load_image_encoder`); whichever it is,
fusion reads :class:`ImageFeatures` and the evidence builder reads :meth:`ImageEncoder.recognise`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@dataclass(frozen=True)
class ImageFeatures:
    """Features of a batch of images."""

    pooled: torch.Tensor  # (n, embed_dim) whole-image embedding, L2-normalised, float32
    patches: torch.Tensor  # (n, num_patches, patch_dim) a square grid of spatial features, float32


@dataclass(frozen=True)
class Guess:
    """One thing an encoder recognises in an image."""

    name: str  # plain words, e.g. "tabby cat"
    probability: float  # 0..1, the encoder's own confidence
    kind: str = ""  # a common word for its group, e.g. "cat"; "" when the name is plain enough


@runtime_checkable
class ImageEncoder(Protocol):
    name: str  # registry name
    backend: str  # e.g. "efficientnet-lite", "transformers", "open_clip"
    trained: bool  # False for a seeded random init
    fingerprint: str  # sha256 of what determines the features (weights + preprocessing)
    embed_dim: int  # pooled width
    patch_dim: int  # patch feature width
    num_patches: int  # patches per image (a square number)

    @property
    def status(self) -> str: ...

    def encode(self, images: Sequence[Image.Image]) -> ImageFeatures: ...

    def recognise(self, image: Image.Image, *, top_k: int = 5) -> list[Guess]:
        """What the image shows, most likely first; empty when this encoder cannot name things
        (a random init)."""
        ...


def weights_fingerprint(state: dict[str, torch.Tensor], *, extra: dict | None = None,
                        every_64mb: Callable[[], object] | None = None) -> str:
    """sha256 over tensors in sorted-name order (name, dtype, shape, raw bytes) and ``extra`` as JSON.
    ``every_64mb()`` is called after each 64 MB hashed (e.g. to give back memory-mapped pages)."""
    digest, hashed = hashlib.sha256(), 0
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
        hashed += tensor.nbytes
        if every_64mb is not None and hashed >= 64 << 20:
            every_64mb()
            hashed = 0
    if extra:
        digest.update(json.dumps(extra, sort_keys=True).encode())
    return digest.hexdigest()
