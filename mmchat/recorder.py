"""Microphone capture for hold-to-talk, without Qt.

A :class:`Recorder` opens an input stream (``sounddevice.InputStream`` by default; tests inject a
fake through ``stream_factory``), collects blocks from the audio callback, tracks the level for a
meter, stops taking audio at ``max_seconds``, and returns the clip as 16 kHz mono float32.

Every way this can go wrong is expected trouble and raises :class:`MMChatError` with a reason a
user can act on: PortAudio missing, no input device, the chosen device gone, the device failing or
going silent mid-recording (the stream ends on its own, or the callback stops coming).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

DEFAULT_MAX_S = 120.0  # s, longest recording unless the caller says otherwise
MIN_CLIP_S = 0.3  # s, shorter clips are a slip of the finger, not a message
STALL_S = 2.0  # s without a callback while recording means the device stopped delivering
LEVEL_FLOOR_DBFS = -60.0  # dBFS shown as an empty meter
PORTAUDIO_HINT = "On Debian/Ubuntu: sudo apt install libportaudio2 (then restart mmchat)."


class InputStream(Protocol):
    """What the recorder needs from a stream (``sounddevice.InputStream`` has all of it)."""

    samplerate: float

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


# Called with keyword arguments: device, channels, dtype, callback, finished_callback.
# ``callback(indata, frames, time_info, status)`` gets (frames, channels) float32 blocks.
StreamFactory = Callable[..., InputStream]


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_sample_rate: float  # Hz
    is_default: bool


def load_sounddevice():
    """The sounddevice module, or MMChatError saying what is missing."""
    try:
        import sounddevice
    except OSError as exc:  # the package is there, the PortAudio library is not
        raise MMChatError("Voice input needs the PortAudio library, which is not installed.",
                          hint=PORTAUDIO_HINT) from exc
    except ImportError as exc:
        raise MMChatError("Voice input needs the sounddevice package.",
                          hint="Install it with: pip install sounddevice") from exc
    return sounddevice


def input_devices() -> list[InputDevice]:
    """Every microphone PortAudio knows, default first; MMChatError without PortAudio."""
    sd = load_sounddevice()
    try:
        devices = sd.query_devices()
        default_index = sd.default.device[0]
    except Exception as exc:  # PortAudioError and friends
        raise MMChatError(f"The audio system could not list devices ({exc}).") from exc
    found = [InputDevice(i, d["name"], int(d["max_input_channels"]), float(d["default_samplerate"]),
                         i == default_index)
             for i, d in enumerate(devices) if d.get("max_input_channels", 0) > 0]
    return sorted(found, key=lambda d: not d.is_default)


def sounddevice_stream(**kwargs: Any) -> InputStream:
    """The default stream factory: a real ``sounddevice.InputStream``."""
    sd = load_sounddevice()
    return sd.InputStream(**kwargs)


class Recorder:
    """One recording at a time from one input device. Thread-safe between the audio callback and
    the caller; the caller polls :attr:`level`, :attr:`elapsed_s`, :attr:`full` and :meth:`check`."""

    def __init__(self, *, device: str = "", max_seconds: float = DEFAULT_MAX_S,
                 stream_factory: StreamFactory | None = None) -> None:
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        self.device = device
        self.max_seconds = float(max_seconds)
        self._factory = stream_factory or sounddevice_stream
        self._lock = threading.Lock()
        self._stream: InputStream | None = None
        self._reset()

    def _reset(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._frames = 0
        self._sample_rate = 0.0
        self._level_dbfs = LEVEL_FLOOR_DBFS
        self._full = False
        self._error: MMChatError | None = None
        self._stopping = False
        self._last_callback = 0.0

    # -- state the UI polls ----------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        return self._stream is not None

    @property
    def sample_rate(self) -> float:
        return self._sample_rate

    @property
    def elapsed_s(self) -> float:
        with self._lock:
            return self._frames / self._sample_rate if self._sample_rate else 0.0

    @property
    def level(self) -> float:
        """The latest block's loudness on a 0..1 scale (``LEVEL_FLOOR_DBFS`` .. 0 dBFS)."""
        with self._lock:
            return float(np.clip(1.0 - self._level_dbfs / LEVEL_FLOOR_DBFS, 0.0, 1.0))

    @property
    def full(self) -> bool:
        """True once ``max_seconds`` of audio have been taken (the rest is dropped)."""
        return self._full

    def check(self) -> None:
        """Raise MMChatError if the device failed or went silent while recording."""
        if self._error is not None:
            raise self._error
        if self._stream is not None and not self._full and self._last_callback \
                and time.monotonic() - self._last_callback > STALL_S:
            self._error = MMChatError("The microphone stopped delivering sound (was it unplugged or taken by "
                                      "another program?).", hint="Check the input device in Settings → Voice.")
            raise self._error

    # -- start / stop ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._stream is not None:
            raise RuntimeError("already recording")
        self._reset()
        last_exc: Exception | None = None
        for channels in (1, 2):  # some hardware devices only open in stereo
            try:
                stream = self._factory(device=self.device or None, channels=channels, dtype="float32",
                                       callback=self._callback, finished_callback=self._finished)
                break
            except MMChatError:
                raise
            except Exception as exc:  # PortAudioError, ValueError for an unknown device name, ...
                last_exc = exc
        else:
            raise self._open_error(last_exc)
        self._sample_rate = float(stream.samplerate)
        self._last_callback = time.monotonic()
        self._stream = stream
        try:
            stream.start()
        except Exception as exc:
            self._stream = None
            _quietly(stream.close)
            raise self._open_error(exc) from exc

    def _open_error(self, exc: Exception | None) -> MMChatError:
        what = f"the microphone {self.device!r}" if self.device else "the microphone"
        text = str(exc) if exc else "unknown error"
        if "no default input" in text.lower() or "error querying device -1" in text.lower():
            return MMChatError("No microphone found: the audio system has no input device.",
                               hint="Plug in a microphone, or pick one in Settings → Voice.")
        if self.device and ("no input device matching" in text.lower() or "no device" in text.lower()):
            return MMChatError(f"The microphone {self.device!r} is not connected.",
                               hint="Pick another input device in Settings → Voice.")
        return MMChatError(f"Could not open {what}: {text}.", hint="Pick another input device in Settings → Voice.")

    def stop(self) -> np.ndarray:
        """End the recording and return it as 16 kHz mono float32."""
        from mmchat.audio import to_mono_16k

        self._close()
        if self._error is not None:
            raise self._error
        with self._lock:
            chunks, rate = self._chunks, self._sample_rate
            self._chunks = []
        if not chunks or not rate:
            return np.zeros(0, dtype=np.float32)
        return to_mono_16k(np.concatenate(chunks), int(round(rate)))

    def cancel(self) -> None:
        """End the recording and throw it away (never raises)."""
        self._close()
        with self._lock:
            self._chunks = []

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._stopping = True
        try:
            stream.stop()
        except Exception as exc:  # the device may already be gone
            if self._error is None:
                self._error = MMChatError(f"The microphone failed while recording ({exc}).",
                                          hint="Check the input device in Settings → Voice.")
        finally:
            _quietly(stream.close)

    # -- the audio thread ------------------------------------------------------------------------
    def _callback(self, indata, frames, time_info, status) -> None:
        if status:
            log.debug("input stream status: %s", status)
        try:
            self._take(indata)
        except Exception as exc:  # never raise into PortAudio's thread: report it through check()
            log.warning("unusable input block: %r", exc)
            with self._lock:
                if self._error is None:
                    self._error = MMChatError(f"The microphone sent unusable audio ({exc}).",
                                              hint="Check the input device in Settings → Voice.")

    def _take(self, indata) -> None:
        block = np.nan_to_num(np.asarray(indata, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
        mono = block.mean(axis=1) if block.ndim == 2 else block.reshape(-1)
        with self._lock:
            self._last_callback = time.monotonic()
            room = int(self.max_seconds * self._sample_rate) - self._frames
            if room <= 0:
                self._full = True
                return
            take = mono[:room].copy()  # the driver reuses its buffer
            self._chunks.append(take)
            self._frames += len(take)
            if len(take) < len(mono) or self._frames >= int(self.max_seconds * self._sample_rate):
                self._full = True
            if take.size:
                rms = float(np.sqrt(np.mean(np.square(take, dtype=np.float64))))
                self._level_dbfs = 20.0 * np.log10(max(rms, 1e-10))

    def _finished(self) -> None:
        if not self._stopping and self._error is None:
            self._error = MMChatError("The microphone stopped while recording (was it unplugged?).",
                                      hint="Check the input device in Settings → Voice.")


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as exc:
        log.debug("ignored while closing the input stream: %s", exc)
