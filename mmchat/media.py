"""How images and voice reach the LLM: fusion token groups where a matching checkpoint exists,
words otherwise.

:func:`media_encoder` looks for a fusion checkpoint for the loaded LLM (the user's own training in the
data folder first, then the one shipped in ``assets/fusion/``), checks it against the loaded encoders
per modality, and falls back modality by modality: an image the fusion cannot take is described by
CLIP zero-shot labels as text; a voice message is then given by its transcript alone. Each fallback
carries a note the CLI and app show once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmchat import fusion as fusion_mod
from mmchat import paths
from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

# Zero-shot vocabulary for describing an image in words when no fusion checkpoint matches.
ZERO_SHOT_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
ZERO_SHOT_SHAPES = ("circle", "square", "triangle", "star")
ZERO_SHOT_SCENES = ("a photo of a person", "a photo of an animal", "a photo of a landscape",
                    "a photo of food", "a screenshot of text", "a chart or diagram", "a drawing")
TRAIN_HINT = "run `mmchat train-fusion`"


@dataclass(frozen=True)
class MediaPart:
    """What one image or clip adds to the prompt: text (may hold ``MEDIA_PLACEHOLDER`` s) and, in
    order, one ``(k, hidden)`` tensor per placeholder."""

    text: str
    tensors: tuple = ()
    note: str = ""  # shown to the user once, e.g. "image encoder untrained"


def checkpoint_dirs(llm_name: str) -> list[Path]:
    """Where a fusion checkpoint for ``llm_name`` may be, in order of preference."""
    return [paths.data_dir() / "fusion" / llm_name, paths.assets_dir() / "fusion" / llm_name]


def find_checkpoint(llm_name: str) -> Path | None:
    for directory in checkpoint_dirs(llm_name):
        if (directory / fusion_mod.META_FILE).is_file():
            return directory
    return None


class MediaEncoder:
    """Turns images and clips into prompt parts, through fusion where it is usable."""

    def __init__(self, engine, *, fusion: fusion_mod.Fusion | None = None, image_fusion: bool = False,
                 audio_fusion: bool = False, reason: str = "") -> None:
        self.engine = engine
        self.fusion = fusion
        self.image_fusion = image_fusion and fusion is not None
        self.audio_fusion = audio_fusion and fusion is not None
        self.reason = reason  # why a modality is not fused, for the notes

    # -- images ----------------------------------------------------------------------------------
    def image(self, image, *, index: int) -> MediaPart:
        from mmchat.llm import MEDIA_PLACEHOLDER

        encoder = self.engine.image_encoder
        if self.image_fusion:
            with torch.inference_mode():
                patches = encoder.encode([image]).patches.float()
                tokens = self.fusion.image_tokens(patches)[0]
            note = "" if encoder.trained else "image encoder untrained (seeded random CLIP): image understanding is limited to what fusion learned"
            start, end = fusion_mod.DELIMITERS["image"]
            return MediaPart(f"{start}{MEDIA_PLACEHOLDER}{end}", (self._to_llm(tokens),), note)
        return self._describe(encoder, image, index)

    def _describe(self, encoder, image, index: int) -> MediaPart:
        colours = encoder.zero_shot(image, [f"a {c} object" for c in ZERO_SHOT_COLOURS])
        shapes = encoder.zero_shot(image, [f"a {s}" for s in ZERO_SHOT_SHAPES])
        scenes = encoder.zero_shot(image, list(ZERO_SHOT_SCENES))
        guess = f"{scenes[0][0]}; main colour: {colours[0][0][2:-7]}; shape: {shapes[0][0][2:]}"
        why = self.reason or "no fusion checkpoint for this model"
        if not encoder.trained:
            return MediaPart(
                f"[Image {index}: attached, but the image encoder is untrained, so its content is unknown; "
                f"say you cannot see it clearly. Unreliable guess: {guess}]",
                note=f"image encoder untrained and {why}: images are described by unreliable guesses "
                     f"(run `mmchat models fetch clip-vit-b-32`, then `mmchat train-fusion`)")
        return MediaPart(f"[Image {index}, described by CLIP zero-shot labels: {guess}]",
                         note=f"{why}: images are described in words ({TRAIN_HINT} for image understanding)")

    # -- audio -----------------------------------------------------------------------------------
    def audio(self, audio: np.ndarray, *, transcript: str) -> MediaPart:
        from mmchat.llm import MEDIA_PLACEHOLDER

        if not self.audio_fusion:
            return MediaPart("")
        with torch.inference_mode():
            frames = self.engine.whisper.encode(audio).float()
            if frames.shape[0] == 0:
                return MediaPart("")
            tokens = self.fusion.audio_tokens(self.fusion.fit_audio_frames(frames).unsqueeze(0))[0]
            tokens = tokens[tokens.abs().amax(-1) > 0]  # a ctc_mlp projector that heard no word gives none
            if tokens.shape[0] == 0:
                return MediaPart("")
        start, end = fusion_mod.DELIMITERS["audio"]
        return MediaPart(f"{start}{MEDIA_PLACEHOLDER}{end}", (self._to_llm(tokens),))

    def _to_llm(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.to(self.engine.llm.dtype)


def media_encoder(engine, *, image: bool = True, audio: bool = True) -> MediaEncoder:
    """The media encoder for this engine: fusion per modality where a checkpoint matches the loaded
    LLM and encoders (and the setting allows it), the text fallback otherwise."""
    llm = engine.llm
    directory = find_checkpoint(llm.name)
    if directory is None:
        return MediaEncoder(engine, reason=f"no fusion checkpoint for {llm.name}")
    image_fp = engine.image_encoder.fingerprint if image else None
    audio_fp = engine.whisper.fingerprint if audio else None
    try:
        fusion = fusion_mod.load(directory, llm=llm.name, hidden_size=llm.hidden_size, embed=llm.embed)
    except MMChatError as exc:
        log.warning("fusion checkpoint %s unusable: %s", directory, exc)
        return MediaEncoder(engine, reason=str(exc).split("\n")[0].rstrip("."))
    cfg = fusion.config
    image_ok = image and (not cfg.image_fingerprint or cfg.image_fingerprint == image_fp)
    audio_ok = audio and (not cfg.audio_fingerprint or cfg.audio_fingerprint == audio_fp)
    reasons = []
    if image and not image_ok:
        reasons.append("the fusion checkpoint was trained against different image encoder weights")
    if audio and not audio_ok:
        reasons.append("the fusion checkpoint was trained against a different speech encoder")
    return MediaEncoder(engine, fusion=fusion, image_fusion=image_ok, audio_fusion=audio_ok,
                        reason="; ".join(reasons) or ("image fusion is off in settings" if not image else ""))
