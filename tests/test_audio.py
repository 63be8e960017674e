"""Audio files in, 16 kHz mono out; bad files are refused clearly; silence is not speech."""

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reliability
from mmchat import audio
from mmchat.audio import SAMPLE_RATE, load_audio, speech_span, to_mono_16k
from mmchat.errors import MMChatError
from speech import clip, synthesize, with_silence


def _tone(freq_hz: float, *, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def test_stereo_44k_wav_is_mixed_and_resampled(tmp_path):
    speech = synthesize("Stereo test clip.", sample_rate=44_100)
    stereo = np.stack([speech, 0.5 * speech], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44_100, subtype="PCM_16")
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert abs(len(loaded) - len(speech) * SAMPLE_RATE / 44_100) <= 2
    reference = to_mono_16k(0.75 * speech, 44_100)  # the mixdown, resampled
    n = min(len(loaded), len(reference))
    assert np.corrcoef(loaded[:n], reference[:n])[0, 1] > 0.999
    assert np.max(np.abs(loaded - reference[: len(loaded)])) < 2e-3  # 16-bit quantisation


@pytest.mark.parametrize("fmt,subtype,tol", [("FLAC", "PCM_24", 1e-3), ("OGG", "VORBIS", None),
                                             ("WAV", "FLOAT", 1e-6), ("WAV", "PCM_U8", 2e-2)])
def test_formats(tmp_path, fmt, subtype, tol):
    speech = clip("fox")
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, speech, SAMPLE_RATE, format=fmt, subtype=subtype)
    loaded = load_audio(path)
    assert loaded.dtype == np.float32
    if tol is None:  # lossy: same length (within a codec frame) and clearly the same signal
        n = min(len(loaded), len(speech))
        assert abs(len(loaded) - len(speech)) < 2048
        assert np.corrcoef(loaded[:n], speech[:n])[0, 1] > 0.95
    else:
        assert len(loaded) == len(speech)
        assert np.max(np.abs(loaded - speech)) < tol


def test_resampling_keeps_the_band_and_removes_aliases():
    tone = to_mono_16k(_tone(1000, rate=44_100), 44_100)
    expected = _tone(1000, rate=SAMPLE_RATE)
    assert np.max(np.abs(tone[200:-200] - expected[200:-200])) < 1e-3
    above_nyquist = to_mono_16k(_tone(10_000, rate=44_100), 44_100)  # 10 kHz > 8 kHz: must vanish
    assert np.sqrt(np.mean(above_nyquist[200:-200] ** 2)) < 1e-3


def test_integer_arrays_are_scaled():
    ramp = np.array([-32768, 0, 16384], dtype=np.int16)
    assert np.allclose(to_mono_16k(ramp, SAMPLE_RATE), [-1.0, 0.0, 0.5])
    assert np.allclose(to_mono_16k(np.array([0, 128, 255], dtype=np.uint8), SAMPLE_RATE),
                       [-1.0, 0.0, 127 / 128])
    assert to_mono_16k(np.zeros((0, 2), dtype=np.float32), 48_000).shape == (0,)
    with pytest.raises(ValueError):
        to_mono_16k(np.zeros((2, 2, 2)), SAMPLE_RATE)


@pytest.mark.parametrize("name,content,message", [
    ("notes.wav", b"These are my shopping notes, not audio.\n" * 20, "not an audio file"),
    ("empty.wav", b"", "empty"),
    ("random.flac", bytes(range(256)) * 8, "not an audio file"),
])
def test_bad_files_raise_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MMChatError, match=message):
        load_audio(path)


def test_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, clip("fox"), SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MMChatError, match="truncated"):
        load_audio(path)
    path.write_bytes(data[:30])  # cut inside the header
    with pytest.raises(MMChatError):
        load_audio(path)


def test_missing_header_only_and_directory(tmp_path):
    with pytest.raises(MMChatError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(MMChatError, match="not a file"):
        load_audio(tmp_path)
    header_only = tmp_path / "header.wav"
    sf.write(header_only, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(MMChatError, match="no audio"):
        load_audio(header_only)


def test_limits(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(3 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    monkeypatch.setattr(audio, "MAX_AUDIO_S", 2)
    with pytest.raises(MMChatError, match="too long"):
        load_audio(path)
    monkeypatch.setattr(audio, "MAX_FILE_BYTES", 1000)
    with pytest.raises(MMChatError, match="too large"):
        load_audio(path)


@pytest.mark.reliability
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=600), riff=st.booleans())
def test_arbitrary_bytes_never_crash(tmp_path, body, riff):
    """Whatever the bytes, load_audio returns audio or raises MMChatError, nothing else."""
    header = b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " if riff else b""
    path = tmp_path / "fuzz.wav"
    path.write_bytes(header + body)
    reliability.count()
    try:
        result = load_audio(path)
    except MMChatError:
        return
    assert result.dtype == np.float32 and result.ndim == 1


def test_speech_span_finds_speech_in_silence_and_noise():
    speech = clip("fox")
    for noise_dbfs in (None, -60.0, -45.0):
        padded = with_silence(0.3 * speech, before_s=1.5, after_s=2.0, noise_dbfs=noise_dbfs)
        span = speech_span(padded)
        assert span is not None
        start, end = span
        # Covers the speech (piper leaves ~0.1 s quiet at each end), not the padding.
        assert 1.0 * SAMPLE_RATE < start < 1.7 * SAMPLE_RATE
        speech_end = 1.5 * SAMPLE_RATE + len(speech)
        assert speech_end - 0.4 * SAMPLE_RATE < end < speech_end + 0.5 * SAMPLE_RATE


@pytest.mark.parametrize("level_dbfs", [-90.0, -60.0, -40.0, -20.0, -6.0])
def test_silence_and_steady_noise_are_not_speech(level_dbfs):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(3 * SAMPLE_RATE).astype(np.float32) * 10 ** (level_dbfs / 20)
    assert speech_span(noise) is None
    assert speech_span(np.zeros(3 * SAMPLE_RATE, dtype=np.float32)) is None
    assert speech_span(np.zeros(10, dtype=np.float32)) is None


def test_a_click_or_hum_is_not_speech():
    click = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    click[SAMPLE_RATE: SAMPLE_RATE + 40] = 0.9
    assert speech_span(click) is None
    hum = _tone(50, rate=SAMPLE_RATE, seconds=3.0)  # mains hum: loud but steady
    assert speech_span(hum) is None


def test_rumble_is_not_speech_but_noisy_speech_is():
    rng = np.random.default_rng(2)
    walk = np.cumsum(rng.standard_normal(5 * SAMPLE_RATE))  # brown noise: wandering low rumble
    rumble = walk - np.convolve(walk, np.ones(1600) / 1600, mode="same")
    for level_dbfs in (-40.0, -20.0, -6.0):
        assert speech_span((rumble / rumble.std() * 10 ** (level_dbfs / 20)).astype(np.float32)) is None
    speech = with_silence(0.3 * clip("milk"), before_s=1.0, after_s=1.0)
    speech_power = float(np.mean((0.3 * clip("milk")) ** 2))
    noise = rng.standard_normal(len(speech)) * np.sqrt(speech_power / 10 ** (5 / 10))  # 5 dB SNR
    assert speech_span((speech + noise).astype(np.float32)) is not None


def test_band_levels_are_calibrated():
    sine = _tone(1000, rate=SAMPLE_RATE)  # amplitude 0.5: -9.03 dBFS
    assert np.allclose(audio.frame_dbfs(sine), -9.03, atol=0.01)
    assert np.allclose(audio.frame_dbfs(sine, band_hz=(250, 4000)), -9.03, atol=0.05)
    assert np.all(audio.frame_dbfs(sine, band_hz=(2000, 4000)) < -60)
