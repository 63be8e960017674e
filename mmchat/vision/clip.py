"""CLIP image encoders behind one small interface, chosen by backend name.

:func:`load_image_encoder` returns an :class:`ImageEncoder`: pooled image embeddings, the last
layer's patch tokens (what fusion projects into the LLM) and zero-shot labelling.

Backends:

* ``"transformers"`` — OpenAI-architecture CLIP through transformers' ``CLIPModel`` with the
  PIL image processor (torchvision is neither needed nor installed). With the fetched weights
  (``mmchat models fetch clip-vit-b-32``) it is the real OpenAI ViT-B/32 (``trained=True``).
  Without them it is a *seeded random init* of the same architecture: deterministic across
  processes and machines with the same torch/transformers, ``trained=False``, and every surface
  should say "image encoder untrained". Random CLIP features still carry colour well and coarse
  layout in the patch tokens, which is what a fusion projector can learn from.
* ``"open_clip"`` — only where ``import open_clip`` works (not on this machine: it needs
  torchvision). Real weights are an open_clip export (``open_clip_config.json`` +
  ``open_clip_model.safetensors``, e.g. from ``timm/vit_base_patch32_clip_224.openai``) placed in
  ``<models>/clip-vit-b-32/open_clip/``; ``backend="auto"`` prefers it when both hold.

The random-init tokenizer: no CLIP vocabulary ships with mmchat, so without fetched files zero-shot
uses :func:`byte_level_clip_tokenizer`, CLIP's own BPE tokenizer with *no merges*: the 512 byte-level
entries of the real vocabulary (ids 0–511, same order) plus its start/end tokens. Every text gets a
valid, unmerged CLIP token sequence. With random weights the zero-shot scores are meaningless either
way (``trained`` says so); the point is that the code path runs and is tested end to end.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from mmchat import download, paths, quant, registry
from mmchat.errors import MMChatError
from mmchat.images import to_rgb
from mmchat.vision import imagenet
from mmchat.vision.features import Guess, ImageEncoder, ImageFeatures, weights_fingerprint

__all__ = ["ImageEncoder", "ImageFeatures", "OpenClipBackend", "TransformersClipBackend", "UNTRAINED",
           "byte_level_clip_tokenizer", "load_image_encoder", "weights_fingerprint"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "clip-vit-b-32"
BATCH_SIZE = 16  # images per forward pass (bounds peak activation memory)
CONTEXT_LENGTH = 77  # CLIP text tokens, including start and end
ZERO_SHOT_TEMPLATE = "a photo of {}."
UNTRAINED = "image encoder untrained"  # the phrase surfaces show for a random-init encoder
OPEN_CLIP_SUBDIR = "open_clip"  # <models>/<name>/open_clip holds an open_clip export


# ------------------------------------------------------------------------------------------------
# Shared helpers


def _bytes_to_unicode_order() -> list[str]:
    """GPT-2 / CLIP byte-to-character table, in CLIP vocabulary order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def byte_level_clip_tokenizer():
    """CLIP's tokenizer with the real vocabulary's 512 byte-level entries and no merges (see module doc)."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode_order()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 49_406, "<|endoftext|>": 49_407})  # CLIP's special-token ids
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CONTEXT_LENGTH)


def _batches(images: Sequence[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    for start in range(0, len(images), size):
        yield [to_rgb(im) for im in images[start:start + size]]


def _check_images(images: Sequence[Image.Image]) -> None:
    for image in images:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected PIL images, got {type(image).__name__}")


def _ranked(labels: Sequence[str], image_embed: torch.Tensor, text_embeds: torch.Tensor,
            logit_scale: torch.Tensor) -> list[tuple[str, float]]:
    logits = logit_scale.exp() * F.normalize(image_embed, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    probs = logits.softmax(dim=-1).reshape(-1).tolist()
    return sorted(zip(labels, probs), key=lambda pair: pair[1], reverse=True)


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(label) for label in labels]
    if not labels:
        raise MMChatError("Zero-shot labelling needs at least one label.")
    return labels


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# ------------------------------------------------------------------------------------------------
# what both back-ends share

class _ImageNetZeroShot:
    """What both CLIP back-ends share: :meth:`encode` in batches, :meth:`zero_shot`, and
    :meth:`recognise`, zero-shot over ImageNet's 1000 class names, whose text embeddings are computed
    once (1000 texts through the text tower take seconds). A random init names nothing: its scores
    would be noise. A back-end gives :meth:`_encode_batch`, :meth:`text_embeddings` and
    :meth:`logit_scale`."""

    @property
    def status(self) -> str:
        if self.trained:
            return f"{self.name} ({self.backend}, pretrained weights)"
        return f"{self.name} ({self.backend}): {UNTRAINED} (seeded random init)"

    def encode(self, images: Sequence[Image.Image]) -> ImageFeatures:
        _check_images(images)
        if not images:
            return ImageFeatures(torch.zeros(0, self.embed_dim), torch.zeros(0, self.num_patches, self.patch_dim))
        pooled, patches = [], []
        with torch.inference_mode():
            for batch in _batches(images, self.batch_size):
                whole, grid = self._encode_batch(batch)
                pooled.append(whole)
                patches.append(grid)
        return ImageFeatures(pooled=torch.cat(pooled), patches=torch.cat(patches))

    def zero_shot(self, image: Image.Image, labels: Sequence[str], *,
                  template: str = ZERO_SHOT_TEMPLATE) -> list[tuple[str, float]]:
        """Labels with softmax probabilities, most likely first (meaningless when not ``trained``)."""
        labels = _check_labels(labels)
        text_embeds = self.text_embeddings([template.format(label) for label in labels])
        return _ranked(labels, self.encode([image]).pooled, text_embeds, self.logit_scale())

    _class_embeds: torch.Tensor | None = None
    _class_lock = threading.Lock()

    def recognise(self, image: Image.Image, *, top_k: int = 5) -> list[Guess]:
        if not self.trained:
            return []
        with self._class_lock:
            if self._class_embeds is None:
                texts = [ZERO_SHOT_TEMPLATE.format(c.name) for c in imagenet.classes()]
                self._class_embeds = F.normalize(self.text_embeddings(texts).float(), dim=-1)
        image_embed = F.normalize(self.encode([image]).pooled, dim=-1)
        with torch.inference_mode():
            probs = (self.logit_scale().exp() * image_embed @ self._class_embeds.T).softmax(-1)[0]
        return imagenet.guesses(probs, top_k=top_k)


RANDOM_INIT_VERSION = 1  # bump when the cached random init's files change
RANDOM_INIT_META = "clip.json"


# ------------------------------------------------------------------------------------------------
# transformers backend

def _random_init_cache(name: str, seed: int):
    """Where the seeded random init of ``name`` is kept: a fresh draw depends on the seed and on
    torch's and transformers' init code, so all three key it."""
    import transformers

    from mmchat.cache import ConversionCache

    key = json.dumps({"seed": seed, "torch": torch.__version__, "transformers": transformers.__version__})
    return ConversionCache(name, hashlib.sha256(key.encode()).hexdigest(), RANDOM_INIT_VERSION)


def _draw_random_init(seed: int, out: Path) -> None:
    """Draw the seeded ViT-B/32 CLIP and save its towers apart: ``out/vision``, ``out/text``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    model = _seeded(seed, lambda: CLIPModel(CLIPConfig()))
    config = model.config
    with torch.device("meta"):  # shells for saving: their weights are the drawn model's
        vision = CLIPVisionModelWithProjection(config.vision_config)
        text = CLIPTextModelWithProjection(config.text_config)
    vision.vision_model, vision.visual_projection = model.vision_model, model.visual_projection
    text.text_model, text.text_projection = model.text_model, model.text_projection
    vision.config.projection_dim = text.config.projection_dim = config.projection_dim
    vision.save_pretrained(out / "vision", safe_serialization=True)
    text.save_pretrained(out / "text", safe_serialization=True)
    (out / RANDOM_INIT_META).write_text(json.dumps({"seed": seed, "logit_scale": model.logit_scale.item()}))


class TransformersClipBackend(_ImageNetZeroShot):
    """OpenAI-architecture CLIP through transformers (real weights or seeded random init).

    Encoding images needs only the vision tower. The text tower (a third of CLIP, 250 MB in fp32)
    serves zero-shot labels alone, the fallback for when no fusion checkpoint matches, so where it
    can be loaded on its own it is loaded on the first :meth:`zero_shot` call."""

    backend = "transformers"

    def __init__(self, vision, processor, tokenizer, *, name: str, trained: bool,
                 text: Callable[[], tuple] | None = None, weights_dir: Path | None = None,
                 batch_size: int = BATCH_SIZE) -> None:
        """``vision`` has ``vision_model`` and ``visual_projection`` (a ``CLIPModel`` or a
        ``CLIPVisionModelWithProjection``); ``text()`` returns (text model, text projection,
        logit scale), by default ``vision``'s own. ``weights_dir``: where ``vision`` was loaded
        from (its memory-mapped pages are given back once the layers are converted)."""
        self.vision = vision.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = tokenizer
        self.name = name
        self.trained = trained
        self.batch_size = batch_size
        self._text_loader = text or (lambda: (vision.text_model, vision.text_projection, vision.logit_scale))
        self._text: tuple | None = None
        self._text_lock = threading.Lock()
        config = getattr(vision.config, "vision_config", vision.config)
        self.embed_dim = vision.visual_projection.out_features
        self.patch_dim = config.hidden_size
        self.num_patches = (config.image_size // config.patch_size) ** 2
        release = (lambda: quant.release_file_pages(weights_dir)) if weights_dir is not None else (lambda: 0)
        state = {f"vision_model.{k}": v for k, v in vision.vision_model.state_dict().items()}
        state.update({f"visual_projection.{k}": v for k, v in vision.visual_projection.state_dict().items()})
        self.fingerprint = weights_fingerprint(state, extra={"preprocess": self._preprocess_config()},
                                               every_64mb=release)
        del state
        if quant.available():
            # The transformer layers' weights in fp16, arithmetic in fp32 (as the LLM's and Whisper's):
            # 170 MB less resident; features within 3e-4 relative of fp32 (pooled cosine > 0.99999),
            # so a fusion checkpoint trained on either works with both. The fingerprint above is of
            # the weights as stored.
            for layer in vision.vision_model.encoder.layers:
                quant.convert_layers(layer)
                release()
        release()

    @classmethod
    def load(cls, spec: registry.ModelSpec, *, batch_size: int = BATCH_SIZE) -> TransformersClipBackend:
        """Fetched OpenAI weights when present, else the seeded random init."""
        if download.is_fetched(spec.name):
            return cls.from_pretrained(download.hub_dir(spec.name), name=spec.name, batch_size=batch_size)
        if download.hub_dir(spec.name).exists():
            log.warning("%s: the fetched files are incomplete or damaged; using the random init "
                        "(run `mmchat models fetch %s` again)", spec.name, spec.name)
        return cls.random_init(spec, batch_size=batch_size)

    @classmethod
    def from_pretrained(cls, directory: Path, *, name: str = DEFAULT_MODEL,
                        batch_size: int = BATCH_SIZE) -> TransformersClipBackend:
        from safetensors import SafetensorError
        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32,
                                              use_safetensors=True)  # never a pickled .bin
            processor = _pil_image_processor().from_pretrained(directory, local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise MMChatError(f"The fetched CLIP weights in {directory} could not be loaded ({exc}).",
                              hint=f"Fetch them again: mmchat models fetch {name}") from None
        return cls(model, processor, tokenizer, name=name, trained=True, weights_dir=directory,
                   batch_size=batch_size)

    @classmethod
    def random_init(cls, spec: registry.ModelSpec, *, batch_size: int = BATCH_SIZE) -> TransformersClipBackend:
        """ViT-B/32-sized CLIP (vision 768 wide, patch 32, 224 px, projection 512), seeded from the registry.

        The init is drawn once and kept in the conversion cache (keyed by seed and library
        versions, so the weights are those a fresh draw would give): later loads read the vision
        tower from there in a fraction of the 2 s a draw takes, and the text tower only on demand."""
        from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

        seed = int(spec.settings.get("seed", 0))
        directory = _random_init_cache(spec.name, seed).load_or_build(lambda out: _draw_random_init(seed, out))
        try:
            vision = CLIPVisionModelWithProjection.from_pretrained(
                directory / "vision", local_files_only=True, dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise MMChatError(f"The cached image encoder in {directory} could not be loaded ({exc}).",
                              hint="Delete that folder; it is rebuilt on the next start.") from None
        config = vision.config
        assert (config.hidden_size, config.patch_size, config.image_size, config.projection_dim) == (
            768, 32, 224, 512), "transformers' default CLIPConfig is no longer ViT-B/32"

        def text() -> tuple:
            model = CLIPTextModelWithProjection.from_pretrained(
                directory / "text", local_files_only=True, dtype=torch.float32, use_safetensors=True).eval()
            scale = json.loads((directory / RANDOM_INIT_META).read_text())["logit_scale"]
            return model.text_model, model.text_projection, torch.tensor(scale)

        log.info("%s: no fetched weights, using a seeded random init (seed %d): %s", spec.name, seed, UNTRAINED)
        return cls(vision, _pil_image_processor()(), byte_level_clip_tokenizer(), name=spec.name,
                   trained=False, text=text, weights_dir=directory / "vision", batch_size=batch_size)

    def text_tower(self) -> tuple:
        """(text model, text projection, logit scale), loaded on first use."""
        with self._text_lock:
            if self._text is None:
                model, projection, scale = self._text_loader()
                self._text = (model.eval().requires_grad_(False), projection.requires_grad_(False), scale.detach())
            return self._text

    def _encode_batch(self, batch: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
        out = self.vision.vision_model(pixel_values=pixels.to(torch.float32))
        return F.normalize(self.vision.visual_projection(out.pooler_output), dim=-1), out.last_hidden_state[:, 1:, :]

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=CONTEXT_LENGTH,
                                return_tensors="pt")
        text_model, text_projection, _ = self.text_tower()
        with torch.inference_mode():
            text = text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            return text_projection(text.pooler_output)

    def logit_scale(self) -> torch.Tensor:
        return self.text_tower()[2]

    def _preprocess_config(self) -> dict:
        p = self.processor
        return {"size": dict(p.size), "crop_size": dict(p.crop_size), "mean": list(p.image_mean),
                "std": list(p.image_std), "resample": int(p.resample)}


def _pil_image_processor():
    """transformers' PIL-backed CLIP image processor (no torchvision)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil


# ------------------------------------------------------------------------------------------------
# open_clip backend (where open_clip imports; it needs a working torchvision)


class OpenClipBackend(_ImageNetZeroShot):
    """CLIP through open_clip: ``visual.forward_intermediates`` gives pooled features and patch tokens."""

    backend = "open_clip"

    def __init__(self, model, preprocess, tokenizer, *, name: str, trained: bool,
                 batch_size: int = BATCH_SIZE) -> None:
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.trained = trained
        self.batch_size = batch_size
        visual = model.visual
        grid = visual.grid_size
        self.num_patches = grid[0] * grid[1]
        self.patch_dim = visual.transformer.width
        self.embed_dim = visual.output_dim
        state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
        self.fingerprint = weights_fingerprint(state, extra={"preprocess": repr(preprocess)})

    @staticmethod
    def importable() -> bool:
        if importlib.util.find_spec("open_clip") is None:
            return False
        try:
            import open_clip  # noqa: F401
        except Exception as exc:  # a broken torchvision raises RuntimeError/OSError at import
            log.info("open_clip is installed but does not import: %s", exc)
            return False
        return True

    @staticmethod
    def weights_dir(spec: registry.ModelSpec) -> Path | None:
        directory = paths.models_dir() / spec.name / OPEN_CLIP_SUBDIR
        if (directory / "open_clip_config.json").is_file() and (directory / "open_clip_model.safetensors").is_file():
            return directory
        return None

    @classmethod
    def load(cls, spec: registry.ModelSpec, *, batch_size: int = BATCH_SIZE) -> OpenClipBackend:
        if not cls.importable():
            raise MMChatError("The open_clip backend is not available here (open_clip does not import).",
                              hint="Use the default transformers backend.")
        import open_clip

        directory = cls.weights_dir(spec)
        if directory is not None:
            source = f"local-dir:{directory}"
            model, _, preprocess = open_clip.create_model_and_transforms(source)
            tokenizer = open_clip.get_tokenizer(source)
        else:
            arch, tag = spec.settings.get("open_clip", ("ViT-B-32", "openai"))
            quick_gelu = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
            model, _, preprocess = _seeded(int(spec.settings.get("seed", 0)), lambda: open_clip.create_model_and_transforms(
                arch, pretrained=None, force_quick_gelu=quick_gelu))
            tokenizer = open_clip.get_tokenizer(arch)
        return cls(model, preprocess, tokenizer, name=spec.name, trained=directory is not None,
                   batch_size=batch_size)

    def _encode_batch(self, batch: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack([self.preprocess(im) for im in batch])
        out = self.model.visual.forward_intermediates(pixels, indices=1, output_fmt="NLC")
        return F.normalize(out["image_features"].float(), dim=-1), out["image_intermediates"][-1].float()

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.encode_text(self.tokenizer(list(texts))).float()

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale


# ------------------------------------------------------------------------------------------------
# Choosing a backend by name

BACKENDS: dict[str, Callable[..., ImageEncoder]] = {
    "transformers": TransformersClipBackend.load,
    "open_clip": OpenClipBackend.load,
}


def load_image_encoder(name: str = DEFAULT_MODEL, *, backend: str = "auto") -> ImageEncoder:
    """The image encoder ``name`` through ``backend`` ("auto": open_clip with real weights, else transformers)."""
    spec = registry.get(name)
    if spec.role is not registry.Role.IMAGE:
        raise MMChatError(f"{name} is not an image encoder (it is a {spec.role.value} model).")
    if backend == "auto":
        use_open_clip = OpenClipBackend.weights_dir(spec) is not None and OpenClipBackend.importable()
        backend = "open_clip" if use_open_clip else "transformers"
    try:
        loader = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown image encoder backend {backend!r}; known: auto, {', '.join(BACKENDS)}") from None
    return loader(spec)
