"""Spoken utterances for fusion training: piper (and espeak-ng when installed), varied and noised.

Every clip is an utterance from :mod:`mmchat.fusion_data.grammar`, synthesised at a random speed
and prosody, padded with a little silence, mixed with white / pink / brown noise or mains hum at a
random SNR, scaled to a random peak level and resampled to 16 kHz mono float32.

Reproducibility: piper's VITS graph draws its prosody noise inside onnxruntime from generators
seeded when the session is created. :class:`Synthesizer` therefore builds its own onnxruntime
session right after ``onnxruntime.set_seed(seed)`` (again at each :meth:`Synthesizer.reseed`), so
the same texts synthesised in the same order after the same seed give the same audio. espeak-ng is deterministic; where it is absent those
clips fall back to piper (recorded in ``meta["voice"]``), so the audio differs between machines
with and without it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mmchat import registry
from mmchat.audio import SAMPLE_RATE, to_mono_16k
from mmchat.errors import MMChatError
from mmchat.fusion_data.grammar import Utterance

log = logging.getLogger(__name__)

# Whisper-base understood these best in a by-hand check; f1/f4 and RP were often misheard.
ESPEAK_LANGUAGES = ("en-us", "en-gb", "en-gb-scotland")
ESPEAK_VARIANTS = ("m1", "m3", "m5", "f2", "f3")
ESPEAK_WPM = (135, 185)  # words per minute
ESPEAK_PITCH = (30, 70)  # espeak-ng pitch 0-99
ESPEAK_TIMEOUT_S = 30
NOISE_TYPES = ("white", "pink", "brown", "hum")
HUM_HZ = (50.0, 60.0)
FLAC_SUBTYPE = "PCM_16"


@dataclass(frozen=True)
class SpeechConfig:
    """Mix of utterance kinds and the ranges each clip's variation is drawn from."""

    kind_weights: tuple[tuple[str, float], ...] = (
        ("transcript", 0.30), ("repeat", 0.14), ("colour_fact", 0.10), ("arithmetic", 0.14),
        ("sequence", 0.10), ("opposite", 0.10), ("fact", 0.12))
    voice: str = "piper-joe-medium"  # registry name of the piper voice
    espeak_fraction: float = 0.2  # clips spoken by espeak-ng, when it is installed
    length_scale: tuple[float, float] = (0.8, 1.3)  # piper speed (larger is slower)
    noise_scale: tuple[float, float] = (0.4, 0.9)  # piper prosody noise
    noise_w: tuple[float, float] = (0.5, 1.0)  # piper duration noise
    snr_db: tuple[float | None, ...] = (None, 30.0, 20.0, 10.0)  # None: no added noise
    snr_weights: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)
    peak_dbfs: tuple[float, float] = (-12.0, -1.0)
    pad_s: tuple[float, float] = (0.05, 0.3)  # silence before and after, each


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    meta: dict


def espeak_path() -> str | None:
    """The espeak-ng executable, or None when it is not installed."""
    return shutil.which("espeak-ng")


class Synthesizer:
    """Makes varied 16 kHz clips; see the module docstring for what makes it reproducible."""

    def __init__(self, *, seed: int, config: SpeechConfig) -> None:
        self.config = config
        self.speaker = _seeded_speaker(config.voice, seed=seed)
        self.espeak = espeak_path() if config.espeak_fraction > 0 else None
        if config.espeak_fraction > 0 and self.espeak is None:
            log.warning("espeak-ng is not installed: every clip uses the piper voice "
                        "(apt-get install espeak-ng adds a second voice source)")

    def reseed(self, seed: int) -> None:
        """Start a fresh piper session seeded with ``seed`` (a new reproducible stream)."""
        self.speaker = _seeded_speaker(self.config.voice, seed=seed)

    def clip(self, utterance: Utterance, rng: np.random.Generator) -> Clip:
        """One varied recording of ``utterance``; ``rng`` draws every random choice."""
        wants_espeak = rng.random() < self.config.espeak_fraction
        if wants_espeak and self.espeak:
            speech, voice_meta = self._espeak(utterance.text, rng)
        else:
            speech, voice_meta = self._piper(utterance.text, rng)
        if not speech.size or not np.any(speech):
            raise MMChatError(f"Speech synthesis produced no audio for {utterance.text!r}.")
        audio, aug_meta = augment(speech, rng, config=self.config)
        meta = {**voice_meta, **aug_meta, "duration_s": round(audio.size / SAMPLE_RATE, 3),
                "sample_rate": SAMPLE_RATE, "template": utterance.template}
        return Clip(audio=audio, meta=meta)

    def _piper(self, text: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        c = self.config
        params = {"length_scale": round(float(rng.uniform(*c.length_scale)), 3),
                  "noise_scale": round(float(rng.uniform(*c.noise_scale)), 3),
                  "noise_w": round(float(rng.uniform(*c.noise_w)), 3)}
        raw = self.speaker.synthesize(text, **params)
        return to_mono_16k(raw, self.speaker.sample_rate), {"voice": f"piper:{c.voice}", **params}

    def _espeak(self, text: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        voice = f"{rng.choice(ESPEAK_LANGUAGES)}+{rng.choice(ESPEAK_VARIANTS)}"
        wpm = int(rng.integers(ESPEAK_WPM[0], ESPEAK_WPM[1] + 1))
        pitch = int(rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1))
        with tempfile.TemporaryDirectory(prefix="mmchat-espeak-") as tmp:
            wav = Path(tmp) / "clip.wav"
            try:
                subprocess.run([self.espeak, "-v", voice, "-s", str(wpm), "-p", str(pitch),
                                "-w", str(wav), text], check=True, capture_output=True,
                               timeout=ESPEAK_TIMEOUT_S)
                data, rate = sf.read(str(wav), dtype="float32")
            except (subprocess.SubprocessError, OSError, sf.LibsndfileError) as exc:
                raise MMChatError(f"espeak-ng failed to speak {text!r}: {exc}",
                                  hint="Reinstall it (apt-get install espeak-ng) or remove it to "
                                       "use only the piper voice.") from exc
        return to_mono_16k(data, rate), {"voice": f"espeak-ng:{voice}", "wpm": wpm, "pitch": pitch}


def _seeded_speaker(name: str, *, seed: int):
    """A :class:`mmchat.tts.Speaker` whose onnxruntime session was created after ``set_seed``.

    The shared voice from ``Speaker.load`` keeps its own session (whose random state depends on
    what it has said before); this one gets a fresh session so its output depends only on
    ``seed`` and the sequence of calls made on it.
    """
    import onnxruntime

    from mmchat.tts import Speaker

    base = Speaker.load(name)
    model_path = registry.get(name).locate_parts()[0]
    onnxruntime.set_seed(seed)
    session = onnxruntime.InferenceSession(str(model_path), sess_options=onnxruntime.SessionOptions(),
                                           providers=["CPUExecutionProvider"])
    voice = dataclasses.replace(base.voice, session=session)
    return Speaker(name=base.name, voice=voice, sample_rate=base.sample_rate)


def augment(speech: np.ndarray, rng: np.random.Generator, *,
            config: SpeechConfig) -> tuple[np.ndarray, dict]:
    """Pad with silence, add noise at a random SNR, scale to a random peak; float32 in [-1, 1]."""
    lead, tail = (int(rng.uniform(*config.pad_s) * SAMPLE_RATE) for _ in range(2))
    speech = speech.astype(np.float64)
    speech_power = float(np.mean(speech**2))
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    weights = np.asarray(config.snr_weights, dtype=float)
    snr = config.snr_db[int(rng.choice(len(config.snr_db), p=weights / weights.sum()))]
    noise_type = str(rng.choice(NOISE_TYPES))
    if snr is not None:
        noise = coloured_noise(noise_type, audio.size, rng)
        audio = audio + noise * np.sqrt(speech_power / 10 ** (snr / 10) / np.mean(noise**2))
    peak_db = float(rng.uniform(*config.peak_dbfs))
    audio = audio * (10 ** (peak_db / 20) / max(np.max(np.abs(audio)), 1e-9))
    meta = {"snr_db": snr, "noise": noise_type if snr is not None else None,
            "peak_dbfs": round(peak_db, 2), "pad_s": [lead / SAMPLE_RATE, tail / SAMPLE_RATE]}
    return np.clip(audio, -1.0, 1.0).astype(np.float32), meta


def coloured_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of zero-mean noise: white, pink (1/f), brown (1/f²) or mains hum."""
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        base = float(rng.choice(HUM_HZ))
        hum = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3))
        return hum + 0.05 * rng.standard_normal(n)
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    exponent = {"pink": 0.5, "brown": 1.0}[kind]  # amplitude ∝ f^-exponent
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, d=1 / SAMPLE_RATE)
    spectrum *= 1 / np.maximum(freqs, 20.0) ** exponent  # flat below 20 Hz
    shaped = np.fft.irfft(spectrum, n)
    return shaped - shaped.mean()


def write_clip(path: Path, audio: np.ndarray) -> None:
    """Save a 16 kHz clip as 16-bit FLAC."""
    sf.write(str(path), audio, SAMPLE_RATE, format="FLAC", subtype=FLAC_SUBTYPE)


def read_clip(path: Path) -> np.ndarray:
    """A clip written by :func:`write_clip` (or any 16 kHz FLAC/WAV/npy) as float32 mono."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    data, rate = sf.read(str(path), dtype="float32")
    return to_mono_16k(data, rate)
