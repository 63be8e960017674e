"""How images and voice reach the LLM.

Every image gets **evidence** (:mod:`mmchat.vision.evidence`): what the image encoder recognises
in plain words with its confidence, the main colours, and the text OCR reads, as a delimited data
block; and, where a fusion checkpoint matches the loaded LLM and image encoder, **fusion tokens**
(the projector's token group in the LLM's embedding space) after it, except for a screenshot or a
page and a photo of people, which the projector never learned. A voice message gets its
transcript and, where the checkpoint's audio projector matches, its fusion tokens.

:func:`media_encoder` looks for a checkpoint for the loaded LLM and image encoder (the user's own
training in the data folder first, then the ones shipped in ``assets/fusion/``), and checks it
against the loaded encoders per modality. Each fallback carries a note the CLI and app show once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmchat import fusion as fusion_mod
from mmchat import paths, registry
from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

# Said after the user's words in a turn with images: measured with Qwen2.5-0.5B, a note after the
# question is followed where the same words before it are not (see mmchat.memory.turn_reminder).
IMAGE_REMINDER = "Answer from the image data above."
TEXT_REMINDER = "Quote text from the picture exactly."
UNSURE_REMINDER = ("If the question is what the picture shows and the classifier is unsure, say so and give "
                   "its best guess with how sure it is.")


@dataclass(frozen=True)
class MediaPart:
    """What one image or clip adds to the prompt: text before the user's words (may hold
    ``MEDIA_PLACEHOLDER`` s), in order one ``(k, hidden)`` tensor per placeholder, and a reminder
    after the user's words."""

    text: str
    tensors: tuple = ()
    note: str = ""  # shown to the user once, e.g. "image encoder untrained"
    after: str = ""


def checkpoint_dirs(llm_name: str, image_encoder: str | None = None) -> list[Path]:
    """Where a fusion checkpoint for ``llm_name`` may be, in order of preference: for
    ``image_encoder`` (``fusion/<llm>/<encoder>``), the LLM's own folder (where earlier versions
    kept theirs), then those trained for other image encoders (their audio projector still applies)."""
    roots = [paths.data_dir() / "fusion" / llm_name, paths.assets_dir() / "fusion" / llm_name]
    preferred = [d for root in roots for d in ((root / image_encoder,) if image_encoder else ()) + (root,)]
    others = [d for root in roots if root.is_dir() for d in sorted(root.iterdir())
              if d.is_dir() and d not in preferred]
    return preferred + others


def find_checkpoint(llm_name: str, image_encoder: str | None = None) -> Path | None:
    for directory in checkpoint_dirs(llm_name, image_encoder):
        if (directory / fusion_mod.META_FILE).is_file():
            return directory
    return None


class MediaEncoder:
    """Turns images and clips into prompt parts, through fusion where it is usable."""

    def __init__(self, engine, *, fusion: fusion_mod.Fusion | None = None, image_fusion: bool = False,
                 audio_fusion: bool = False, image_reason: str = "", audio_reason: str = "") -> None:
        self.engine = engine
        self.fusion = fusion
        self.image_fusion = image_fusion and fusion is not None
        self.audio_fusion = audio_fusion and fusion is not None
        # Why a modality is not fused: an image turn says its reason (a voice turn's transcript is
        # what the user reviewed and sent, so it needs no note).
        self.image_reason = image_reason
        self.audio_reason = audio_reason

    @property
    def reason(self) -> str:
        """Why either modality is not fused ("" when both are)."""
        return "; ".join(dict.fromkeys(r for r in (self.image_reason, self.audio_reason) if r))

    # -- images ----------------------------------------------------------------------------------
    def image(self, image, *, index: int) -> MediaPart:
        from mmchat.vision import evidence

        problems: list[str] = []
        encoder = _slot(lambda: self.engine.image_encoder, "the image encoder", problems)
        reader = _slot(lambda: self.engine.text_reader, "text reading (OCR)", problems)
        face_finder = _slot(lambda: self.engine.face_finder, "the face detector", problems)
        features, guesses = None, None
        if self.image_fusion and encoder is not None:
            features, guesses = self._encode(encoder, image, problems)
        found = evidence.gather(image, index=index, encoder=encoder, reader=reader, face_finder=face_finder,
                                guesses=guesses)
        problems += found.problems
        text = found.render()
        tensors: tuple = ()
        # No fusion tokens for a page of text or a photo of people: the projector learned drawings (their
        # shape) and photos of things, and on a traceback its tokens made Qwen 0.5B answer "This
        # screenshot shows a pale square", on the astronaut photo "a football helmet". (Leaving them out
        # wherever the classifier is sure cost drawings their shape too: 60 % instead of 83 %, as a
        # drawn disc is "a ping-pong ball".)
        if features is not None and not (found.mostly_text or found.faces):
            tokens = self._fusion_step(lambda: self.fusion.image_tokens(features.patches.float())[0], problems)
            if tokens is not None:
                from mmchat.llm import MEDIA_PLACEHOLDER

                start, end = fusion_mod.DELIMITERS["image"]
                text += f"\n{start}{MEDIA_PLACEHOLDER}{end}"
                tensors = (self._to_llm(tokens),)
        notes = [f"Image {index}: {problem}; the reply uses the rest." for problem in problems]
        if encoder is not None and not encoder.trained:
            notes.append("image encoder untrained (seeded random CLIP): objects are not named, colours and text "
                         "are (run `mmchat models fetch clip-vit-b-32`, then `mmchat train-fusion`)")
        if not self.image_fusion and self.image_reason:
            notes.append(f"Pictures reach {self.engine.llm.name} as words only (what the image encoder and OCR "
                         f"found), without fusion tokens: {self.image_reason}.")
        return MediaPart(text, tensors, "\n".join(notes), _reminder(found))

    def _encode(self, encoder, image, problems: list[str]):
        """(the encoder's features, its guesses when they came from the same pass) or (None, None)."""
        def encode():
            if hasattr(encoder, "encode_and_recognise"):
                return encoder.encode_and_recognise(image)
            return encoder.encode([image]), None

        return self._fusion_step(encode, problems) or (None, None)

    @staticmethod
    def _fusion_step(step, problems: list[str]):
        """``step()`` under inference mode; a failure is said in ``problems`` (the evidence still goes) and gives None."""
        try:
            with torch.inference_mode():
                return step()
        except MMChatError as exc:
            problems.append(f"the fusion tokens could not be made ({str(exc).splitlines()[0]})")
        except Exception as exc:  # a bug in an encoder must not lose the turn: logged, said, evidence still goes
            log.exception("image fusion failed")
            problems.append(f"the fusion tokens could not be made ({type(exc).__name__}: {exc})")
        return None

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


def _slot(get, what: str, problems: list[str]):
    """A model from the engine, or None with the reason added to ``problems`` (e.g. a missing package)."""
    try:
        return get()
    except MMChatError as exc:
        problems.append(f"{what} is unavailable ({str(exc).splitlines()[0]})")
    except Exception as exc:  # a loader's bug: the engine's slot already logged and shows it
        problems.append(f"{what} could not be loaded ({type(exc).__name__}: {exc})")
    return None


def _reminder(found) -> str:
    words = [IMAGE_REMINDER]
    if found.text is not None and any(found.text.lines):
        words.append(TEXT_REMINDER)
    if found.unsure:
        words.append(UNSURE_REMINDER)
    return f"({' '.join(words)})"


def media_encoder(engine, *, image: bool = True, audio: bool = True) -> MediaEncoder:
    """The media encoder for this engine: fusion per modality where a checkpoint matches the loaded
    LLM and encoders (and the setting allows it), evidence and transcripts alone otherwise."""
    llm = engine.llm
    if llm.hidden_size is None:  # a chat server: the chat-completions API carries text only
        why = "it is a chat server, and the chat-completions API carries text only"
        return MediaEncoder(engine, image_reason=why, audio_reason=why)
    image_name = engine.model_name("image")
    directory = find_checkpoint(llm.name, image_name)
    if directory is None:
        why = f"no fusion projector is trained for it ({_train_hint(llm.name)})"
        return MediaEncoder(engine, image_reason=why, audio_reason=why)
    try:
        fusion = fusion_mod.load(directory, llm=llm.name, hidden_size=llm.hidden_size, embed=llm.embed)
    except MMChatError as exc:
        log.warning("fusion checkpoint %s unusable: %s", directory, exc)
        why = str(exc).split("\n")[0].rstrip(".")
        return MediaEncoder(engine, image_reason=why, audio_reason=why)
    cfg = fusion.config
    image_ok = image and _image_matches(engine, cfg)
    audio_fp = engine.whisper.fingerprint if audio else None
    audio_ok = audio and (not cfg.audio_fingerprint or cfg.audio_fingerprint == audio_fp)
    image_reason = audio_reason = ""
    if not image:
        image_reason = "image fusion is off in settings"
    elif not image_ok:
        image_reason = f"no fusion checkpoint was trained for the image encoder {image_name}"
    if audio and not audio_ok:
        audio_reason = "the fusion checkpoint was trained against a different speech encoder"
    return MediaEncoder(engine, fusion=fusion, image_fusion=image_ok, audio_fusion=audio_ok,
                        image_reason=image_reason, audio_reason=audio_reason)


def _train_hint(llm_name: str) -> str:
    """How to get a projector for this LLM: training, unless it is a fetched GGUF (no torch copy to train
    through, see :func:`mmchat.engine.llm_runtime`)."""
    spec = next((m for m in registry.MODELS if m.name == llm_name), None)  # None: a stand-in LLM (the demo's)
    if spec is not None and spec.source_format == "gguf" and not spec.bundled:
        return "mmchat trains projectors only for bundled models and Hugging Face downloads"
    return f"run `mmchat train-fusion --model {llm_name}` to train one"


def _image_matches(engine, cfg: fusion_mod.FusionConfig) -> bool:
    """The checkpoint's image projector was trained on this encoder's weights (an unloadable
    encoder matches nothing: the image turn then goes on with the evidence that works)."""
    if cfg.image_encoder != engine.model_name("image"):
        return False
    try:
        fingerprint = engine.image_encoder.fingerprint
    except Exception:  # reported with the image turn (MediaEncoder.image), not here
        return False
    return not cfg.image_fingerprint or cfg.image_fingerprint == fingerprint
