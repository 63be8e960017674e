"""Playing synthesized speech to the speakers, without Qt (read-aloud of replies).

:class:`AudioOutput` writes float32 mono chunks to an output stream (``sounddevice.OutputStream``
by default; tests inject a fake) in short slices, so a stop request is honoured within
``SLICE_S``. Missing PortAudio or a broken device raise :class:`MMChatError` with the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from mmchat.errors import MMChatError
from mmchat.recorder import load_sounddevice

log = logging.getLogger(__name__)

SLICE_S = 0.1  # s of audio per blocking write: how quickly Stop takes effect


class OutputStream(Protocol):
    def start(self) -> None: ...

    def write(self, data: np.ndarray) -> Any: ...

    def stop(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


# Called with keyword arguments: samplerate, channels, dtype, device.
OutputFactory = Callable[..., OutputStream]


def sounddevice_output(**kwargs: Any) -> OutputStream:
    return load_sounddevice().OutputStream(**kwargs)


class AudioOutput:
    def __init__(self, *, sample_rate: int, device: str = "", stream_factory: OutputFactory | None = None) -> None:
        self.sample_rate = int(sample_rate)
        self.device = device
        self._factory = stream_factory or sounddevice_output

    def play(self, chunks: Iterable[np.ndarray], *, stop: threading.Event | None = None) -> bool:
        """Play ``chunks`` in order until they run out or ``stop`` is set; True if played to the end."""
        stop = stop or threading.Event()
        try:
            stream = self._factory(samplerate=self.sample_rate, channels=1, dtype="float32",
                                   device=self.device or None)
            stream.start()
        except MMChatError:
            raise
        except Exception as exc:
            raise MMChatError(f"Could not open the audio output ({exc}).",
                              hint="Check that speakers or headphones are connected.") from exc
        step = max(1, int(self.sample_rate * SLICE_S))
        completed = False
        try:
            for chunk in chunks:
                data = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1, 1)
                for start in range(0, len(data), step):
                    if stop.is_set():
                        return False
                    stream.write(data[start:start + step])
            completed = not stop.is_set()
            return completed
        except MMChatError:
            raise
        except Exception as exc:
            raise MMChatError(f"The audio output failed while playing ({exc}).") from exc
        finally:
            try:
                stream.stop() if completed else stream.abort()
            except Exception as exc:
                log.debug("closing the output stream: %s", exc)
            try:
                stream.close()
            except Exception as exc:
                log.debug("closing the output stream: %s", exc)


def available() -> tuple[bool, str]:
    """Can sound be played here? (ok, reason) — never raises."""
    try:
        sd = load_sounddevice()
        devices = sd.query_devices()
    except MMChatError as exc:
        return False, str(exc).split("\n")[0]
    except Exception as exc:
        return False, f"the audio system could not list devices ({exc})"
    if not any(d.get("max_output_channels", 0) > 0 for d in devices):
        return False, "no speakers or headphones were found"
    return True, "audio output available"
