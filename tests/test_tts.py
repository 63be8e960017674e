"""Offline TTS with the bundled piper voice (content is checked by Whisper in test_whisper.py)."""

import threading

import numpy as np
import pytest

from mmchat.errors import MMChatError
from mmchat.tts import MAX_TEXT_CHARS, Speaker


@pytest.fixture(scope="module")
def speaker():
    return Speaker.load()


def test_synthesize_returns_normalised_mono_speech(speaker):
    audio = speaker.synthesize("The quick brown fox jumps over the lazy dog.")
    assert speaker.sample_rate == 22_050
    assert audio.dtype == np.float32 and audio.ndim == 1
    duration_s = len(audio) / speaker.sample_rate
    assert 1.5 < duration_s < 5.0
    assert float(np.max(np.abs(audio))) == pytest.approx(1.0, abs=1e-3)
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 0.05  # speech, not a click in silence


def test_length_scale_slows_speech(speaker):
    text = "Please read this sentence slowly."
    normal = speaker.synthesize(text)
    slow = speaker.synthesize(text, length_scale=1.8)
    assert len(slow) > 1.4 * len(normal)


def test_stream_yields_one_chunk_per_sentence(speaker):
    chunks = list(speaker.stream("First sentence here. Then a second one! And a third?"))
    assert len(chunks) == 3
    assert all(c.dtype == np.float32 and len(c) > speaker.sample_rate // 4 for c in chunks)


def test_stream_stops_when_asked(speaker):
    stop = threading.Event()
    stream = speaker.stream("One. Two. Three. Four.", stop=stop)
    first = next(stream)
    assert len(first) > 0
    stop.set()
    assert list(stream) == []


def test_no_words_give_no_audio(speaker):
    assert speaker.synthesize("").shape == (0,)
    assert speaker.synthesize("   \n").shape == (0,)


def test_limits(speaker):
    with pytest.raises(MMChatError, match="too long"):
        speaker.synthesize("a" * (MAX_TEXT_CHARS + 1))
    with pytest.raises(ValueError):
        speaker.synthesize("hi", length_scale=0)


def test_unknown_or_wrong_voice():
    with pytest.raises(MMChatError):
        Speaker.load("no-such-voice")
    with pytest.raises(MMChatError, match="not a text-to-speech"):
        Speaker.load("whisper-base")


def test_load_is_shared(speaker):
    assert Speaker.load().voice is speaker.voice


def test_noise_off_is_deterministic(speaker):
    text = "Deterministic speech for tests."
    first = speaker.synthesize(text, noise_scale=0.0, noise_w=0.0)
    second = speaker.synthesize(text, noise_scale=0.0, noise_w=0.0)
    assert np.array_equal(first, second)
