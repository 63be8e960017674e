"""Hold-to-talk in the window, through a fake input stream: transcript for review, send at once,
F8, Esc, maximum length, device failure, no microphone; and read-aloud with a fake speaker."""

import threading

import numpy as np
import pytest
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QApplication

from mmchat.probe import Probe
from mmchat.settings import Settings
from mmchat_ui.demo import DemoEngine, DemoLLM, DemoWhisper
from mmchat_ui.services import microphone_probe
from ui_helpers import WAIT_MS, fake_microphone, make_window, tone, wait_reply  # noqa: F401

pytestmark = pytest.mark.gui


def hold_mic(qtbot, window, seconds_heard: float) -> None:
    """Press the mic button, wait until the recorder has ``seconds_heard`` of audio, release."""
    qtbot.mousePress(window.composer.mic_button, Qt.MouseButton.LeftButton)
    assert window.voice.state == "recording"
    qtbot.waitUntil(lambda: window.voice.recorder is not None and window.voice.recorder.elapsed_s >= seconds_heard,
                    timeout=WAIT_MS)
    qtbot.mouseRelease(window.composer.mic_button, Qt.MouseButton.LeftButton)


def test_hold_to_talk_puts_the_transcript_in_the_composer_for_review(qtbot, make_window):
    whisper = DemoWhisper("What is the capital of France?")
    llm = DemoLLM("Paris.")
    mic = fake_microphone(tone(1.2, 48_000), samplerate=48_000)
    window = make_window(DemoEngine(llm, whisper), make_recorder=mic)
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    qtbot.mousePress(window.composer.mic_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.voice.recorder.elapsed_s >= 1.0, timeout=WAIT_MS)
    assert window.composer.recording.isVisible()
    qtbot.waitUntil(lambda: window.composer.meter.level > 0.3, timeout=WAIT_MS)  # the live level meter
    assert window.composer.elapsed.text().startswith("0:01")
    qtbot.mouseRelease(window.composer.mic_button, Qt.MouseButton.LeftButton)
    assert not window.composer.recording.isVisible()
    qtbot.waitUntil(lambda: window.composer.text() == "What is the capital of France?", timeout=WAIT_MS)
    assert window.composer.has_voice_clip and whisper.calls == 1
    assert not window.controller.busy  # for review: nothing sent yet
    window.composer.set_text("What is the capital of France, please?")  # the user corrects it
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    reply = wait_reply(qtbot, window)
    assert reply.text == "Paris." and whisper.calls == 1  # the reviewed transcript was not redone
    user = window.chat.messages()[0]
    assert user.voice is not None and user.text == "What is the capital of France, please?"
    stored = window.store.messages(window.controller.current.conversation_id)[0]
    assert [a.kind for a in stored.attachments] == ["audio"]
    assert stored.meta["transcript"] == "What is the capital of France, please?"
    assert stored.attachments[0].meta["duration_s"] >= 1.0


def test_send_at_once_sends_the_clip_on_release(qtbot, make_window):
    whisper = DemoWhisper("Tell me a joke")
    window = make_window(DemoEngine(DemoLLM("Why did the chicken…"), whisper),
                         make_recorder=fake_microphone(tone(1.0)), settings=Settings(voice_send_at_once=True))
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    hold_mic(qtbot, window, 0.8)
    reply = wait_reply(qtbot, window)
    assert reply.text == "Why did the chicken…"
    assert window.chat.messages()[0].text == "Tell me a joke" and window.chat.messages()[0].voice is not None
    assert whisper.calls == 1 and window.composer.text() == ""


def key(window, kind, key_code):
    QApplication.sendEvent(window.composer.edit, QKeyEvent(kind, key_code, Qt.KeyboardModifier.NoModifier))


def test_f8_is_a_hold_to_talk_key(qtbot, make_window):
    window = make_window(DemoEngine(whisper=DemoWhisper("hello from the keyboard")),
                         make_recorder=fake_microphone(tone(1.0)))
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    key(window, QEvent.Type.KeyPress, Qt.Key.Key_F8)
    assert window.voice.state == "recording"
    qtbot.waitUntil(lambda: window.voice.recorder.elapsed_s >= 0.6, timeout=WAIT_MS)
    key(window, QEvent.Type.KeyRelease, Qt.Key.Key_F8)
    qtbot.waitUntil(lambda: window.composer.text() == "hello from the keyboard", timeout=WAIT_MS)


def test_escape_cancels_a_recording(qtbot, make_window):
    whisper = DemoWhisper("never heard")
    mic = fake_microphone(tone(2.0))
    window = make_window(DemoEngine(whisper=whisper), make_recorder=mic)
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    qtbot.mousePress(window.composer.mic_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.voice.recorder.elapsed_s >= 0.3, timeout=WAIT_MS)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Escape)
    assert window.voice.state == "idle" and not window.composer.recording.isVisible()
    assert "cancelled" in window.composer.error.text()
    qtbot.mouseRelease(window.composer.mic_button, Qt.MouseButton.LeftButton)  # the release changes nothing
    assert whisper.calls == 0 and window.composer.text() == "" and not window.composer.has_voice_clip


def test_recording_stops_at_the_maximum_length(qtbot, make_window):
    whisper = DemoWhisper("a long ramble")
    window = make_window(DemoEngine(whisper=whisper), make_recorder=fake_microphone(tone(3.0), speed=8.0),
                         settings=Settings(max_recording_s=1))
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    qtbot.mousePress(window.composer.mic_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.composer.text() == "a long ramble", timeout=WAIT_MS)  # released by itself
    assert "maximum length" in window.composer.error.text()
    assert len(window.composer.draft().audio) == 16_000


def test_too_short_a_press_is_not_a_message(qtbot, make_window):
    whisper = DemoWhisper("x")
    window = make_window(DemoEngine(whisper=whisper), make_recorder=fake_microphone(tone(1.0), speed=1.0))
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    qtbot.mousePress(window.composer.mic_button, Qt.MouseButton.LeftButton)
    qtbot.mouseRelease(window.composer.mic_button, Qt.MouseButton.LeftButton)
    assert "Too short" in window.composer.error.text() and whisper.calls == 0


def test_device_failing_mid_recording_is_reported(qtbot, make_window):
    window = make_window(make_recorder=fake_microphone(tone(3.0), fail_after_s=0.5))
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    qtbot.mousePress(window.composer.mic_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.voice.state == "idle", timeout=WAIT_MS)
    assert "unplugged" in window.composer.error.text()
    qtbot.mouseRelease(window.composer.mic_button, Qt.MouseButton.LeftButton)


def test_no_speech_heard_says_so(qtbot, make_window):
    window = make_window(DemoEngine(whisper=DemoWhisper("")), make_recorder=fake_microphone(np.zeros(16_000)))
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    hold_mic(qtbot, window, 0.8)
    qtbot.waitUntil(lambda: "No speech" in window.composer.error.text(), timeout=WAIT_MS)
    assert not window.composer.has_voice_clip


def test_no_microphone_disables_the_button_and_says_why(qtbot, make_window):
    reason = "Voice input needs the PortAudio library, which is not installed."
    window = make_window(microphone=Probe(False, reason))
    qtbot.waitUntil(lambda: reason in window.composer.mic_button.toolTip(), timeout=WAIT_MS)
    assert not window.composer.mic_button.isEnabled()
    key(window, QEvent.Type.KeyPress, Qt.Key.Key_F8)  # the key explains it too
    assert reason in window.composer.error.text()
    key(window, QEvent.Type.KeyRelease, Qt.Key.Key_F8)


def test_this_machines_real_microphone_probe_reaches_the_button(qtbot, make_window):
    found = microphone_probe(Settings())  # here: no PortAudio, so voice input is off with that reason
    window = make_window(microphone=found)
    qtbot.waitUntil(lambda: window.voice.reason == found.reason, timeout=WAIT_MS)
    assert window.composer.mic_button.isEnabled() == found.ok
    if not found.ok:
        assert found.reason in window.composer.mic_button.toolTip()


def test_a_missing_chosen_microphone_is_named(monkeypatch):
    import mmchat.probe
    import mmchat_ui.services as services

    monkeypatch.setattr(mmchat.probe, "microphone", lambda: Probe(True, "1 input device(s)"))
    monkeypatch.setattr(services, "_input_devices", lambda: ["Built-in Microphone"])
    assert microphone_probe(Settings(input_device="Built-in")).ok
    missing = microphone_probe(Settings(input_device="USB Headset"))
    assert not missing.ok and "USB Headset" in missing.reason


class FakeSpeaker:
    sample_rate = 22_050

    def __init__(self):
        self.texts = []

    def stream(self, text, *, stop=None):
        self.texts.append(text)
        for _ in range(200):
            if stop is not None and stop.is_set():
                return
            yield np.zeros(2205, dtype=np.float32)


class FakeOutput:
    def __init__(self, sample_rate):
        self.sample_rate = sample_rate
        self.chunks = 0
        self.started = threading.Event()

    def play(self, chunks, *, stop):
        import time

        for _chunk in chunks:
            self.chunks += 1
            self.started.set()
            time.sleep(0.01)
        return not stop.is_set()


def test_read_aloud_plays_the_reply_and_esc_stops_it(qtbot, make_window):
    speaker = FakeSpeaker()
    outputs = []
    window = make_window(DemoEngine(DemoLLM("Here is **the** answer.\n\n```\ncode()\n```")),
                         make_speaker=lambda: speaker,
                         make_output=lambda rate: outputs.append(FakeOutput(rate)) or outputs[-1])
    qtbot.keyClicks(window.composer.edit, "Say it")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    reply = wait_reply(qtbot, window)
    qtbot.waitUntil(lambda: window.speak_button.isEnabled(), timeout=WAIT_MS)
    reply.speak_button.click()
    qtbot.waitUntil(lambda: bool(outputs) and outputs[0].started.is_set(), timeout=WAIT_MS)
    assert window.read_aloud.speaking and speaker.texts == ["Here is the answer. (code block)"]
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Escape)
    assert not window.read_aloud.speaking
    qtbot.waitUntil(lambda: window.runner.running("read-aloud") == [], timeout=WAIT_MS)
    assert outputs[0].chunks < 200  # stopped early


def test_read_aloud_setting_speaks_every_reply(qtbot, make_window):
    speaker = FakeSpeaker()
    window = make_window(DemoEngine(DemoLLM("Spoken reply.")), make_speaker=lambda: speaker,
                         make_output=FakeOutput, settings=Settings(read_aloud=True))
    assert window.speak_button.isChecked()
    qtbot.keyClicks(window.composer.edit, "Hi")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    wait_reply(qtbot, window)
    qtbot.waitUntil(lambda: speaker.texts == ["Spoken reply."], timeout=WAIT_MS)
    window.read_aloud.stop()


def test_read_aloud_without_speakers_explains(qtbot, make_window):
    window = make_window(DemoEngine(DemoLLM("Words.")), speakers=Probe(False, "no speakers or headphones were found"))
    qtbot.waitUntil(lambda: not window.speak_button.isEnabled(), timeout=WAIT_MS)
    qtbot.keyClicks(window.composer.edit, "Hi")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    reply = wait_reply(qtbot, window)
    reply.speak_button.click()
    assert "no speakers" in window.status.currentMessage()


@pytest.mark.slow
def test_real_speech_through_the_fake_microphone_is_transcribed_by_whisper(qtbot, make_window):
    """A piper-synthesized question, played into the recorder at 22.05 kHz, transcribed by real Whisper."""
    from mmchat.encoders.whisper import Whisper
    from mmchat.tts import Speaker

    speaker = Speaker.load()
    # Deterministic synthesis: with piper's default noise one CI run heard "capital of friends".
    clip = speaker.synthesize("What is the capital of France?", noise_scale=0.0, noise_w=0.0)
    clip = np.concatenate([np.zeros(int(0.3 * speaker.sample_rate), np.float32), clip,
                           np.zeros(int(0.3 * speaker.sample_rate), np.float32)])
    whisper = Whisper.load()
    window = make_window(DemoEngine(whisper=whisper),
                         make_recorder=fake_microphone(clip, samplerate=speaker.sample_rate, speed=4.0))
    qtbot.waitUntil(lambda: window.composer.mic_button.isEnabled(), timeout=WAIT_MS)
    hold_mic(qtbot, window, len(clip) / speaker.sample_rate)
    qtbot.waitUntil(lambda: window.composer.text() != "", timeout=60_000)
    text = window.composer.text().lower()
    assert "capital" in text and "france" in text, text
    assert window.composer.has_voice_clip


class RecordingOutput:
    """An audio output that keeps what it is given (this machine has no sound card)."""

    def __init__(self, sample_rate):
        self.sample_rate = sample_rate
        self.audio = []

    def play(self, chunks, *, stop):
        for chunk in chunks:
            if stop.is_set():
                return False
            self.audio.append(np.asarray(chunk))
        return True


@pytest.mark.slow
def test_read_aloud_with_the_real_piper_voice(qtbot, make_window):
    from mmchat.tts import Speaker

    outputs = []
    window = make_window(DemoEngine(DemoLLM("The capital of France is **Paris**.")), make_speaker=Speaker.load,
                         make_output=lambda rate: outputs.append(RecordingOutput(rate)) or outputs[-1])
    qtbot.keyClicks(window.composer.edit, "Capital of France?")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    reply = wait_reply(qtbot, window)
    qtbot.waitUntil(lambda: window.speak_button.isEnabled(), timeout=WAIT_MS)
    reply.speak_button.click()
    qtbot.waitUntil(lambda: not window.read_aloud.speaking, timeout=60_000)
    audio = np.concatenate(outputs[0].audio)
    assert outputs[0].sample_rate == 22_050
    seconds = len(audio) / outputs[0].sample_rate
    assert 1.0 < seconds < 6.0 and float(np.sqrt(np.mean(audio ** 2))) > 0.02  # real speech, not silence
