"""Hardware faults: a microphone whose driver sends garbage or vanishes mid-recording, no PortAudio,
no input device; and the terminal commands on a machine with no display at all. The app keeps
working and says what happened; the CLI works without any display variable."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import reliability
from mmchat.errors import MMChatError
from mmchat.probe import Probe
from mmchat.recorder import Recorder
from test_recorder import factory, tone
from ui_helpers import WAIT_MS, FeedingStream, fake_microphone, make_window, type_and_send, wait_reply  # noqa: F401

pytestmark = pytest.mark.reliability

NO_DISPLAY_TIMEOUT_S = 600  # s: `chat --once` imports torch and loads a model on a shared CPU


@pytest.mark.parametrize("bad", [object(), np.array(["not", "audio"]), np.full((64, 1), np.nan)],
                         ids=["object", "strings", "nan"])
def test_a_callback_with_garbage_is_reported_not_raised(bad):
    streams = []
    rec = Recorder(stream_factory=factory(streams, samplerate=16_000))
    rec.start()
    streams[0].feed(tone(0.3, 16_000))
    streams[0].callback(bad, 64, None, None)  # must not raise into the audio thread
    if isinstance(bad, np.ndarray) and bad.dtype.kind == "f":  # NaN: silenced, recording goes on
        rec.check()
        assert np.isfinite(rec.level) and np.isfinite(rec.stop()).all()
        return
    with pytest.raises(MMChatError, match="unusable audio"):
        rec.check()
    with pytest.raises(MMChatError, match="unusable audio"):
        rec.stop()
    assert streams[0].closed and not rec.recording


def garbage_microphone(after_blocks: int = 4):
    """A ``make_recorder`` service whose stream sends a few good blocks, then something that is
    not audio at all (what a misbehaving driver might hand the callback)."""
    def make(settings):
        def stream_factory(**kwargs):
            callback, calls = kwargs.pop("callback"), [0]

            def broken(indata, frames, time_info, status):
                calls[0] += 1
                callback(indata if calls[0] < after_blocks else object(), frames, time_info, status)
            return FeedingStream(tone(3.0, 16_000), 16_000, callback=broken, **kwargs)
        return Recorder(device=settings.input_device, max_seconds=settings.max_recording_s,
                        stream_factory=stream_factory)
    return make


@pytest.mark.gui
@pytest.mark.parametrize("fault,expected", [
    ("unplugged", "unplugged"), ("garbage", "unusable audio"),
])
def test_app_reports_a_failing_microphone_and_keeps_working(qtbot, make_window, fault, expected):  # noqa: F811
    from PySide6.QtCore import Qt

    make = fake_microphone(tone(3.0, 16_000), fail_after_s=0.5) if fault == "unplugged" else garbage_microphone()
    window = make_window(make_recorder=make)
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    qtbot.mousePress(window.composer.mic_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.voice.state == "idle", timeout=WAIT_MS)
    qtbot.mouseRelease(window.composer.mic_button, Qt.MouseButton.LeftButton)
    assert expected in window.composer.error.text()
    type_and_send(qtbot, window, "typing still works")
    assert wait_reply(qtbot, window).text  # a reply came: the app carries on
    assert window.composer.mic_button.isEnabled()  # and the microphone can be tried again


@pytest.mark.gui
@pytest.mark.parametrize("reason", [
    "Voice input needs the PortAudio library, which is not installed.",
    "No microphone found: the audio system has no input device.",
])
def test_app_without_portaudio_or_input_device_says_why_and_chats(qtbot, make_window, reason):  # noqa: F811
    window = make_window(microphone=Probe(False, reason))
    qtbot.waitUntil(lambda: reason in window.composer.mic_button.toolTip(), timeout=WAIT_MS)
    assert not window.composer.mic_button.isEnabled()
    type_and_send(qtbot, window, "hello without a microphone")
    assert wait_reply(qtbot, window).text


def _no_display_env(data_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    return dict(env, MMCHAT_DATA_DIR=str(data_dir))


def test_doctor_works_without_a_display(data_dir):
    result = subprocess.run([sys.executable, "-m", "mmchat.cli", "doctor", "--json"], capture_output=True,
                            text=True, timeout=NO_DISPLAY_TIMEOUT_S, env=_no_display_env(data_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "Traceback" not in result.stderr
    text = json.dumps(report).lower()
    assert "display" in text  # the missing display is reported as a feature that is off, not a crash
    reliability.note("doctor --json with DISPLAY, WAYLAND_DISPLAY and QT_QPA_PLATFORM unset")


def test_chat_once_works_without_a_display(data_dir):
    command = [sys.executable, "-m", "mmchat.cli", "chat", "--model", "smollm2-135m-instruct", "--max-tokens", "12",
               "--seed", "0", "--once", "Say hello."]
    result = subprocess.run(command, capture_output=True, text=True, timeout=NO_DISPLAY_TIMEOUT_S,
                            env=_no_display_env(data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() and "Traceback" not in result.stderr
    history = subprocess.run([sys.executable, "-m", "mmchat.cli", "history"], capture_output=True, text=True,
                             timeout=NO_DISPLAY_TIMEOUT_S, env=_no_display_env(data_dir))
    assert history.returncode == 0 and "Say hello." in history.stdout  # stored, as usual
    reliability.note(f"reply: {result.stdout.strip()[:60]!r}")
