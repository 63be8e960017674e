"""Shared test helpers: speech clips synthesized offline with the bundled piper voice, and WER.

Import from tests as ``from speech import ...`` (pytest puts ``tests/`` on ``sys.path``). Clips are
synthesized once per process and cached; they are 16 kHz mono float32 unless asked otherwise, and
deterministic (piper's noise off) unless ``natural=True``, so test outcomes are reproducible.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import numpy as np

from mmchat.audio import SAMPLE_RATE, to_mono_16k

# Test sentences: short, everyday, a mix of function words, numbers-free (no "two" vs "2" ambiguity).
SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "milk": "Please remind me to buy milk and eggs tomorrow morning.",
    "garden": "My sister planted tomatoes and roses in her garden last spring.",
    "train": "The train to London leaves from platform nine in the evening.",
    "weather": "It will be cold and windy today, so take a warm coat.",
}


@lru_cache(maxsize=64)
def _synthesize_native(text: str, length_scale: float, natural: bool) -> tuple[np.ndarray, int]:
    from mmchat.tts import Speaker

    speaker = Speaker.load()
    noise = {} if natural else {"noise_scale": 0.0, "noise_w": 0.0}
    audio = speaker.synthesize(text, length_scale=length_scale, **noise)
    audio.setflags(write=False)
    return audio, speaker.sample_rate


def synthesize(text: str, *, length_scale: float = 1.0, sample_rate: int = SAMPLE_RATE,
               natural: bool = False) -> np.ndarray:
    """Speech for ``text`` as float32 mono at ``sample_rate`` (cached per process; a fresh copy)."""
    audio, native_rate = _synthesize_native(text, length_scale, natural)
    if sample_rate == native_rate:
        return audio.copy()
    audio_16k = to_mono_16k(audio, native_rate)
    if sample_rate == SAMPLE_RATE:
        return audio_16k
    import soxr

    return soxr.resample(audio_16k, SAMPLE_RATE, sample_rate, quality="HQ").astype(np.float32)


def clip(name: str) -> np.ndarray:
    """16 kHz speech for one of :data:`SENTENCES`."""
    return synthesize(SENTENCES[name])


def with_silence(audio: np.ndarray, *, before_s: float, after_s: float,
                 noise_dbfs: float | None = None, seed: int = 0) -> np.ndarray:
    """``audio`` (16 kHz) with silence around it, optionally under seeded white noise."""
    pad = [np.zeros(int(s * SAMPLE_RATE), dtype=np.float32) for s in (before_s, after_s)]
    out = np.concatenate([pad[0], audio, pad[1]])
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        out = out + rng.standard_normal(len(out)).astype(np.float32) * 10 ** (noise_dbfs / 20)
    return out.astype(np.float32)


_SPELLINGS = {"favourite": "favorite", "colour": "color", "grey": "gray", "okay": "ok"}
_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen twenty").split()
_SPELLINGS.update({str(i): word for i, word in enumerate(_NUMBERS)})


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation; British/American spellings and numbers 0-20 unified."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text)
    return [_SPELLINGS.get(w, w) for w in words]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1] / len(ref)
