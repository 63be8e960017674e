"""Audio input: read files, convert to 16 kHz mono float32, and find where speech is.

Files are read by libsndfile (``soundfile``: WAV, FLAC, OGG/Vorbis and more, no ffmpeg), mixed down
to mono and resampled with soxr (band-limited, high quality). :func:`speech_span` is an energy
gate that keeps silence and steady low noise from ever reaching the speech recogniser.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mmchat.errors import MMChatError

SAMPLE_RATE = 16_000  # Hz, what Whisper and the fusion encoder expect
MAX_AUDIO_S = 600  # s, longest file accepted
MAX_FILE_BYTES = 512 * 1024 * 1024  # bytes
# bytes of float32 samples a file may decode to (10 min of 48 kHz stereo is 230 MB): a small file
# whose header claims many channels or a high rate is refused before decoding.
MAX_DECODED_BYTES = 512 * 1024 * 1024
SUPPORTED = "WAV, FLAC or OGG"
MAX_FLOAT_SAMPLE = 64.0  # full scale is 1.0; beyond +36 dB a float sample is garbage, not sound

# Speech gate (see speech_span).
FRAME_S = 0.02  # s, analysis frame
SPEECH_BAND_HZ = (250.0, 4000.0)  # Hz, where voiced speech has its energy (rumble and hiss do not count)
FLOOR_PERCENTILE = 10  # the quietest 10% of frames estimate the noise floor
MIN_SPEECH_DBFS = -50.0  # dBFS, a frame's speech-band level below this is silence whatever the floor
ABOVE_FLOOR_DB = 9.0  # dB, a speech frame stands this far above the noise floor (speech at 5 dB SNR passes)
MIN_SPEECH_S = 0.15  # s of active frames needed to count as speech (clicks do not)
SPAN_PAD_S = 0.3  # s kept either side of the active frames (fricatives lie above the band)


def load_audio(path: str | Path) -> np.ndarray:
    """The file at ``path`` as 16 kHz mono float32, or :class:`MMChatError` if it cannot be used."""
    path = Path(path)
    size = _checked_size(path)
    _check_wav_complete(path, size)
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.SoundFileError) as exc:
        raise MMChatError(f"{path.name} is not an audio file this app can read.",
                          hint=f"Use a {SUPPORTED} file.") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise MMChatError(f"{path.name} contains no audio.")
    duration_s = info.frames / info.samplerate
    if duration_s > MAX_AUDIO_S:
        raise MMChatError(f"{path.name} is too long ({duration_s / 60:.1f} min).",
                          hint=f"The limit is {MAX_AUDIO_S // 60} minutes; trim the recording.")
    if info.frames * max(1, info.channels) * 4 > MAX_DECODED_BYTES:
        raise MMChatError(f"{path.name} is too large to decode ({info.channels} channels at {info.samplerate} Hz).",
                          hint="Export it as mono or stereo at 48 kHz or less.")
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError) as exc:
        raise MMChatError(f"{path.name} is damaged and could not be decoded ({exc}).",
                          hint=f"Re-export it as a {SUPPORTED} file.") from exc
    if data.shape[0] == 0:
        raise MMChatError(f"{path.name} contains no audio.")
    return to_mono_16k(data, sample_rate)


def _checked_size(path: Path) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MMChatError(f"The audio file {path} does not exist.") from None
    except OSError as exc:
        raise MMChatError(f"The audio file {path} cannot be read: {exc.strerror}.") from exc
    if not path.is_file():
        raise MMChatError(f"{path} is not a file.")
    if size == 0:
        raise MMChatError(f"{path.name} is empty (0 bytes).")
    if size > MAX_FILE_BYTES:
        raise MMChatError(f"{path.name} is too large ({size / 2**20:.0f} MiB).",
                          hint=f"The limit is {MAX_FILE_BYTES // 2**20} MiB.")
    return size


def _check_wav_complete(path: Path, size: int) -> None:
    """Reject a RIFF/WAVE file whose data chunk claims more bytes than the file holds.

    libsndfile quietly plays what is there; a cut-off download or copy should say so instead.
    Unfinalised recordings (data size 0 or 0xFFFFFFFF) are left to libsndfile.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, length = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if length not in (0, 0xFFFFFFFF) and pos + 8 + length > size:
                    raise MMChatError(
                        f"{path.name} is truncated: it holds {size - pos - 8:,} of "
                        f"{length:,} bytes of audio.",
                        hint="The file was probably cut off while copying or downloading.")
                return
            pos += 8 + length + (length & 1)
    raise MMChatError(f"{path.name} is a damaged WAV file (no audio data chunk).")


def to_mono_16k(data: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix ``data`` (frames,) or (frames, channels) down to mono and resample to 16 kHz float32.

    Integer samples are scaled to [-1, 1]; NaN and infinities become 0; float samples are clipped
    to ±``MAX_FLOAT_SAMPLE``.
    """
    data = _as_float(np.asarray(data))
    if data.ndim == 2:
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN from garbage floats become 0 below
            data = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    elif data.ndim != 1:
        raise ValueError(f"expected (frames,) or (frames, channels) audio, got shape {data.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    # Float files can hold any value; garbage like 1e38 would overflow the resampler into NaN.
    data = np.clip(data, -MAX_FLOAT_SAMPLE, MAX_FLOAT_SAMPLE)
    if sample_rate != SAMPLE_RATE and data.size:
        data = soxr.resample(data, sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(data, dtype=np.float32)


def _as_float(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    if data.dtype.kind == "i":
        return (data / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    if data.dtype.kind == "u":
        half = float(2 ** (8 * data.dtype.itemsize - 1))
        return ((data - half) / half).astype(np.float32)
    raise ValueError(f"unsupported sample type {data.dtype}")


def frame_dbfs(audio: np.ndarray, *, sample_rate: int = SAMPLE_RATE,
               band_hz: tuple[float, float] | None = None) -> np.ndarray:
    """Level in dBFS of consecutive ``FRAME_S`` frames (a partial last frame is dropped).

    With ``band_hz``, only the energy between those frequencies counts (Hann-windowed FFT).
    """
    frame = max(1, int(round(FRAME_S * sample_rate)))
    n = len(audio) // frame
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    frames = np.asarray(audio[: n * frame], dtype=np.float32).reshape(n, frame)
    if band_hz is None:
        power = np.mean(frames.astype(np.float64) ** 2, axis=1)
    else:
        power = np.concatenate([_band_power(frames[i: i + 4096], sample_rate, band_hz)
                                for i in range(0, n, 4096)])
    return (10.0 * np.log10(np.maximum(power, 1e-20))).astype(np.float32)


def _band_power(frames: np.ndarray, sample_rate: int, band_hz: tuple[float, float]) -> np.ndarray:
    """Mean-square of each frame's content within ``band_hz`` (Parseval, window-compensated)."""
    size = frames.shape[1]
    window = np.hanning(size).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    freqs = np.fft.rfftfreq(size, d=1.0 / sample_rate)
    in_band = (freqs >= band_hz[0]) & (freqs <= band_hz[1])
    return 2.0 * spectrum[:, in_band].sum(axis=1, dtype=np.float64) / (size**2 * np.mean(window**2))


def speech_span(audio: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> tuple[int, int] | None:
    """Sample range ``[start, end)`` holding speech, padded by ``SPAN_PAD_S``; None if there is none.

    A frame is active when its speech-band level is above ``MIN_SPEECH_DBFS`` and ``ABOVE_FLOOR_DB``
    above the noise floor (a low percentile of all frames), so silence, near-silence, rumble and
    steady noise of any level give None. Fewer than ``MIN_SPEECH_S`` of active frames (a click)
    give None too.
    """
    levels = frame_dbfs(audio, sample_rate=sample_rate, band_hz=SPEECH_BAND_HZ)
    if levels.size == 0:
        return None
    floor = float(np.percentile(levels, FLOOR_PERCENTILE))
    active = (levels > MIN_SPEECH_DBFS) & (levels > floor + ABOVE_FLOOR_DB)
    if active.sum() * FRAME_S < MIN_SPEECH_S:
        return None
    frame = max(1, int(round(FRAME_S * sample_rate)))
    pad = int(SPAN_PAD_S * sample_rate)
    first, last = np.flatnonzero(active)[[0, -1]]
    start = max(0, int(first) * frame - pad)
    end = min(len(audio), (int(last) + 1) * frame + pad)
    return start, end
