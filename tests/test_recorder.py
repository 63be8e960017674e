"""Microphone capture through a fake input stream, and the errors a user can meet."""

import numpy as np
import pytest

from mmchat import recorder as recorder_mod
from mmchat.errors import MMChatError
from mmchat.recorder import Recorder


class FakeStream:
    """Stands in for sounddevice.InputStream: the test pushes blocks through the callback."""

    def __init__(self, *, samplerate=48_000, fail_stop=False, device=None, channels=1, dtype="float32",
                 callback=None, finished_callback=None):
        self.samplerate = samplerate
        self.device, self.channels, self.dtype = device, channels, dtype
        self.callback, self.finished_callback = callback, finished_callback
        self.fail_stop = fail_stop
        self.started = self.stopped = self.closed = False

    def feed(self, audio: np.ndarray, block: int = 1024) -> None:
        audio = audio.reshape(len(audio), -1).astype(np.float32)
        for start in range(0, len(audio), block):
            chunk = audio[start:start + block]
            self.callback(chunk, len(chunk), None, None)

    def start(self):
        self.started = True

    def stop(self):
        if self.fail_stop:
            raise RuntimeError("Error stopping stream: device unavailable")
        self.stopped = True
        if self.finished_callback:
            self.finished_callback()

    def close(self):
        self.closed = True


def factory(streams: list, **options):
    def make(**kwargs):
        stream = FakeStream(**options, **kwargs)
        streams.append(stream)
        return stream
    return make


def tone(seconds: float, rate: int, amplitude: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_records_and_resamples_to_16k_mono():
    streams = []
    rec = Recorder(stream_factory=factory(streams))
    rec.start()
    assert rec.recording and streams[0].started and streams[0].channels == 1
    streams[0].feed(tone(1.5, 48_000))
    assert rec.elapsed_s == pytest.approx(1.5, abs=0.01)
    audio = rec.stop()
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(24_000, abs=50)
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.05)
    assert streams[0].stopped and streams[0].closed and not rec.recording


def test_stereo_blocks_are_mixed_to_mono():
    streams = []
    rec = Recorder(stream_factory=factory(streams, samplerate=16_000))
    rec.start()
    left = tone(0.5, 16_000, 0.4)
    streams[0].feed(np.stack([left, left], axis=1))
    audio = rec.stop()
    assert np.allclose(audio, left, atol=1e-4)


def test_level_follows_loudness():
    streams = []
    rec = Recorder(stream_factory=factory(streams, samplerate=16_000))
    rec.start()
    assert rec.level == 0.0
    streams[0].feed(tone(0.1, 16_000, 0.001))
    quiet = rec.level
    streams[0].feed(tone(0.1, 16_000, 0.5))
    assert rec.level > quiet + 0.3
    rec.cancel()


def test_stops_taking_audio_at_the_maximum():
    streams = []
    rec = Recorder(max_seconds=1.0, stream_factory=factory(streams, samplerate=16_000))
    rec.start()
    streams[0].feed(tone(0.6, 16_000))
    assert not rec.full
    streams[0].feed(tone(0.6, 16_000))
    assert rec.full
    assert len(rec.stop()) == 16_000


def test_cancel_discards_the_clip():
    streams = []
    rec = Recorder(stream_factory=factory(streams, samplerate=16_000))
    rec.start()
    streams[0].feed(tone(0.5, 16_000))
    rec.cancel()
    assert not rec.recording and streams[0].closed
    rec.start()  # a recorder can be used again
    assert len(rec.stop()) == 0


def test_device_that_ends_the_stream_mid_recording_is_reported():
    streams = []
    rec = Recorder(stream_factory=factory(streams, samplerate=16_000))
    rec.start()
    streams[0].feed(tone(0.3, 16_000))
    streams[0].finished_callback()  # PortAudio ended the stream: device unplugged
    with pytest.raises(MMChatError, match="unplugged"):
        rec.check()
    with pytest.raises(MMChatError, match="stopped while recording"):
        rec.stop()
    assert streams[0].closed


def test_device_that_goes_silent_is_reported():
    streams = []
    rec = Recorder(stream_factory=factory(streams, samplerate=16_000))
    rec.start()
    streams[0].feed(tone(0.2, 16_000))
    rec.check()  # fine so far
    rec._last_callback -= recorder_mod.STALL_S + 1  # no callback for a while
    with pytest.raises(MMChatError, match="stopped delivering sound"):
        rec.check()
    rec.cancel()


def test_device_that_fails_to_stop_is_reported():
    streams = []
    rec = Recorder(stream_factory=factory(streams, samplerate=16_000, fail_stop=True))
    rec.start()
    streams[0].feed(tone(0.5, 16_000))
    with pytest.raises(MMChatError, match="failed while recording"):
        rec.stop()
    assert streams[0].closed and not rec.recording


def test_unknown_device_name_gives_a_clear_error():
    def make(**kwargs):
        raise ValueError("No input device matching 'USB mic'")

    rec = Recorder(device="USB mic", stream_factory=make)
    with pytest.raises(MMChatError, match="'USB mic' is not connected"):
        rec.start()
    assert not rec.recording


def test_mono_refused_falls_back_to_stereo():
    streams = []
    inner = factory(streams, samplerate=16_000)

    def make(**kwargs):
        if kwargs["channels"] == 1:
            raise RuntimeError("Invalid number of channels")
        return inner(**kwargs)

    rec = Recorder(stream_factory=make)
    rec.start()
    assert streams[0].channels == 2
    rec.cancel()


def test_without_portaudio_the_default_stream_says_why(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):  # what importing sounddevice does without libportaudio2
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(MMChatError, match="PortAudio") as info:
        Recorder().start()
    assert "libportaudio2" in str(info.value)
    with pytest.raises(MMChatError, match="PortAudio"):
        recorder_mod.input_devices()
