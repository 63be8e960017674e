"""Speech playback through a fake output stream: plays in order, stops quickly, reports failures."""

import threading

import numpy as np
import pytest

from mmchat import playback
from mmchat.errors import MMChatError
from mmchat.playback import AudioOutput


class FakeOutput:
    def __init__(self, *, fail_write=False, **kwargs):
        self.kwargs = kwargs
        self.written = []
        self.fail_write = fail_write
        self.started = self.stopped = self.aborted = self.closed = False

    def start(self):
        self.started = True

    def write(self, data):
        if self.fail_write:
            raise RuntimeError("device unavailable")
        assert data.dtype == np.float32 and data.ndim == 2 and data.shape[1] == 1
        self.written.append(data.copy())

    def stop(self):
        self.stopped = True

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True


def factory(streams, **options):
    def make(**kwargs):
        streams.append(FakeOutput(**options, **kwargs))
        return streams[-1]
    return make


def test_plays_every_chunk_in_order_in_short_slices():
    streams = []
    out = AudioOutput(sample_rate=22_050, stream_factory=factory(streams))
    chunks = [np.full(22_050, 0.1, np.float32), np.full(11_025, 0.2, np.float32)]
    assert out.play(iter(chunks)) is True
    stream = streams[0]
    assert stream.kwargs["samplerate"] == 22_050 and stream.kwargs["channels"] == 1
    played = np.concatenate(stream.written)[:, 0]
    assert np.array_equal(played, np.concatenate(chunks))
    assert max(len(w) for w in stream.written) <= int(22_050 * playback.SLICE_S)
    assert stream.stopped and stream.closed and not stream.aborted


def test_stop_ends_playback_within_a_slice():
    streams = []
    out = AudioOutput(sample_rate=16_000, stream_factory=factory(streams))
    stop = threading.Event()

    def chunks():
        yield np.zeros(16_000, np.float32)
        stop.set()  # Stop pressed while the first sentence plays
        yield np.zeros(16_000, np.float32)

    assert out.play(chunks(), stop=stop) is False
    assert sum(len(w) for w in streams[0].written) <= 16_000 + int(16_000 * playback.SLICE_S)
    assert streams[0].aborted and streams[0].closed


def test_device_failure_is_expected_trouble():
    streams = []
    out = AudioOutput(sample_rate=16_000, stream_factory=factory(streams, fail_write=True))
    with pytest.raises(MMChatError, match="failed while playing"):
        out.play([np.zeros(100, np.float32)])
    assert streams[0].closed


def test_stream_that_cannot_open_is_expected_trouble():
    def broken(**kwargs):
        raise RuntimeError("Invalid sample rate")

    with pytest.raises(MMChatError, match="Could not open the audio output"):
        AudioOutput(sample_rate=7, stream_factory=broken).play([np.zeros(10, np.float32)])


def test_available_never_raises_and_names_the_reason():
    ok, reason = playback.available()
    assert isinstance(ok, bool) and reason
    try:
        import sounddevice  # noqa: F401
    except OSError:
        assert not ok and "PortAudio" in reason  # this machine: no PortAudio
