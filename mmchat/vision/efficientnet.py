"""EfficientNet-Lite0 trained on ImageNet-1k: the image encoder that works offline out of the box.

The weights come in a pip package as a pickled PyTorch state dict (``.pth``). They are unpickled
once, with ``torch.load(weights_only=True)`` (tensors only, no code), checked against the registry's
sha256 and kept as safetensors in the verified conversion cache; every later load reads the
safetensors. The network is ``efficientnet_lite_pytorch``'s (Apache-2.0).

The network gives three things:

* the 1000 ImageNet class probabilities, turned into plain-word guesses (:meth:`recognise`);
* the 7×7 map of 1280-d features after the head convolution, as 49 "patches" (:meth:`encode`),
  which a fusion projector reads like CLIP's patch tokens, each with its cell's mean colour
  (3 more dimensions): ImageNet training shifts colours at random, so the network's features
  barely tell yellow from blue, and a projector trained on them alone named a yellow square
  blue;
* the head features' average, L2-normalised, as the pooled embedding.

The classifier sees the picture as the weights were trained: the shorter side resized to 256 px
(bicubic), the centre 224×224 cropped, pixels scaled to [-1, 1] (mean = std = 0.5). Fusion's
features come from a second pass over the whole picture, letterboxed into 224×224: a drawing 176
px wide and 740 tall lost its shape to the centre crop, and the projector named the wrong one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmchat import registry
from mmchat.cache import ConversionCache, sha256_file
from mmchat.errors import MMChatError
from mmchat.images import to_rgb
from mmchat.vision import imagenet
from mmchat.vision.features import Guess, ImageFeatures, weights_fingerprint

log = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet-lite0"
IMAGE_SIZE = 224  # px, the crop the network sees
RESIZE_TO = 256  # px, the shorter side before the centre crop (224 / 0.875)
MEAN = STD = 0.5  # per channel, on [0, 1] pixels
BATCH_SIZE = 16  # images per forward pass
CONVERTER_VERSION = 1  # bump when the cached safetensors' content changes
WEIGHTS_FILE = "model.safetensors"
FEATURE_DIM = 1280  # channels of the head convolution
COLOUR_DIM = 3  # each patch's mean colour (RGB in [-1, 1]) follows its features
GRID = 7  # the head's spatial side at 224 px


def _network():
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(ARCHITECTURE)


def _convert(source: Path, out: Path) -> None:
    """The package's pickled state dict, read as tensors only, saved as safetensors."""
    from safetensors.torch import save_file

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        raise MMChatError(f"The EfficientNet weights in {source} could not be read ({type(exc).__name__}: {exc}).",
                          hint="Reinstall the model packages: the README's setup command does this.") from None
    state = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    save_file(state, out / WEIGHTS_FILE, metadata={"source": source.name})


class EfficientNetEncoder:
    """EfficientNet-Lite0 (ImageNet-1k): guesses in plain words and a 7×7 feature map."""

    backend = "efficientnet-lite"
    trained = True
    embed_dim = FEATURE_DIM
    patch_dim = FEATURE_DIM + COLOUR_DIM
    num_patches = GRID * GRID

    def __init__(self, network: torch.nn.Module, *, name: str, batch_size: int = BATCH_SIZE) -> None:
        self.network = network.eval().requires_grad_(False)
        self.name = name
        self.batch_size = batch_size
        self.fingerprint = weights_fingerprint(self.network.state_dict(), extra={"preprocess": {
            "resize": RESIZE_TO, "crop": IMAGE_SIZE, "mean": MEAN, "std": STD, "resample": "bicubic",
            "cell_colour": COLOUR_DIM, "fusion_view": "letterbox"}})

    @classmethod
    def load(cls, spec: registry.ModelSpec) -> EfficientNetEncoder:
        """From the verified safetensors cache, converting the package's ``.pth`` the first time."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        source = spec.locate_parts()[0]
        cache = ConversionCache(spec.name, spec.sha256 or "", CONVERTER_VERSION)
        if not cache.verify():
            if sha256_file(source) != spec.sha256:
                raise MMChatError(f"{source} does not match its registry sha256 (a corrupt or different package).",
                                  hint="Reinstall the model packages: the README's setup command does this.")
        directory = cache.load_or_build(lambda out: _convert(source, out))
        network = _network()
        try:
            missing, unexpected = network.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=False)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise MMChatError(f"The cached EfficientNet weights in {directory} could not be read ({exc}).",
                              hint="Delete that folder; it is rebuilt on the next start.") from None
        if missing or [k for k in unexpected if not k.endswith("num_batches_tracked")]:
            raise MMChatError(f"The EfficientNet weights do not fit the network (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}).", hint="Reinstall the model packages.")
        return cls(network, name=spec.name)

    @property
    def status(self) -> str:
        return f"{self.name} (ImageNet-1k, pretrained weights)"

    def _run(self, images: Sequence[Image.Image], view) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, 1280, 7, 7) head features, (n, 1000) class probabilities and (n, 3, 7, 7) cell colours of
        ``view(image)`` for each image, in batches."""
        maps, probs, colours = [], [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = torch.stack([view(_checked(image)) for image in images[start:start + self.batch_size]])
                features = self.network.extract_features(pixels)
                maps.append(features)
                probs.append(self.network._fc(features.mean((2, 3))).softmax(-1))
                colours.append(F.adaptive_avg_pool2d(pixels, features.shape[-1]))
        return torch.cat(maps), torch.cat(probs), torch.cat(colours)

    def encode(self, images: Sequence[Image.Image]) -> ImageFeatures:
        """Features of the whole picture (letterboxed, :func:`letterbox`) for fusion."""
        if not images:
            return ImageFeatures(torch.zeros(0, self.embed_dim), torch.zeros(0, self.num_patches, self.patch_dim))
        maps, _, colours = self._run(images, letterbox)
        patches = torch.cat([maps, colours], 1).flatten(2).transpose(1, 2).float()  # (n, 49, 1283), row-major
        return ImageFeatures(pooled=F.normalize(maps.mean((2, 3)), dim=-1), patches=patches)

    def classify(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 1000) ImageNet class probabilities, from the centre crop the classifier was trained on."""
        return self._run(images, preprocess)[1] if images else torch.zeros(0, imagenet.NUM_CLASSES)

    def recognise(self, image: Image.Image, *, top_k: int = 5) -> list[Guess]:
        return imagenet.guesses(self.classify([image])[0], top_k=top_k)

    def encode_and_recognise(self, image: Image.Image, *, top_k: int = 5) -> tuple[ImageFeatures, list[Guess]]:
        """Both (an image turn with fusion needs both): two passes, the whole picture and the centre crop."""
        return self.encode([image]), self.recognise(image, top_k=top_k)


def _checked(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected PIL images, got {type(image).__name__}")
    return to_rgb(image)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return (torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0 - MEAN) / STD


def preprocess(image: Image.Image) -> torch.Tensor:
    """(3, 224, 224) float32 pixels in [-1, 1]: shorter side to 256 px, centre crop (the classifier's view)."""
    width, height = image.size
    scale = RESIZE_TO / min(width, height)
    resized = image.resize((max(IMAGE_SIZE, round(width * scale)), max(IMAGE_SIZE, round(height * scale))),
                           Image.Resampling.BICUBIC)
    left = (resized.width - IMAGE_SIZE) // 2
    top = (resized.height - IMAGE_SIZE) // 2
    return _to_tensor(resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)))


def letterbox(image: Image.Image) -> torch.Tensor:
    """(3, 224, 224) float32 pixels in [-1, 1]: the whole picture scaled into the square, the rest filled
    with its border's median colour (fusion's view: a centre crop of a tall drawing cut its shape off)."""
    width, height = image.size
    scale = IMAGE_SIZE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(int(v) for v in np.median(border, axis=0)))
    canvas.paste(image.resize(size, Image.Resampling.BICUBIC),
                 ((IMAGE_SIZE - size[0]) // 2, (IMAGE_SIZE - size[1]) // 2))
    return _to_tensor(canvas)


def load(spec: registry.ModelSpec) -> EfficientNetEncoder:
    return EfficientNetEncoder.load(spec)
