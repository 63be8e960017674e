"""Hold-to-talk: record while the mic button (or F8) is held, then transcribe off the GUI thread.

:class:`VoiceController` drives a :class:`mmchat.recorder.Recorder` (created through the app's
services, so tests can feed a fake stream), polls it for the level meter and elapsed time, stops at
the maximum length, and on release either puts the transcript in the composer for review or, with
"send at once", sends the clip straight away (the chat session transcribes it). Esc cancels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QWidget

from mmchat.errors import MMChatError
from mmchat_ui import theme
from mmchat_ui.workers import Task, TaskRunner

log = logging.getLogger(__name__)

POLL_MS = 50  # level meter and elapsed-time refresh while recording
HOLD_TO_TALK_KEY = Qt.Key.Key_F8
SAMPLE_RATE = 16_000  # Hz, what the recorder returns (mmchat.audio.SAMPLE_RATE; not imported: numpy-free start)
METER_BARS = 14


class LevelMeter(QWidget):
    """A row of bars lit up to the current input level (0..1)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.level = 0.0
        self.setFixedSize(QSize(METER_BARS * 5, 16))
        self.setToolTip("Input level")

    def set_level(self, level: float) -> None:
        level = max(0.0, min(1.0, level))
        if abs(level - self.level) > 0.01:
            self.level = level
            self.update()

    def paintEvent(self, _event) -> None:
        t = theme.current()
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        lit = round(self.level * METER_BARS)
        for i in range(METER_BARS):
            colour = QColor(t.danger if i >= METER_BARS - 2 else t.accent) if i < lit else QColor(t.border)
            painter.setBrush(colour)
            height = 4 + (self.height() - 4) * (i + 1) / METER_BARS
            painter.drawRoundedRect(QRectF(i * 5, self.height() - height, 3, height), 1.5, 1.5)
        painter.end()


class VoiceController(QObject):
    """idle → recording → (transcribing →) idle. One recording at a time."""

    transcribed = Signal(object, str)  # audio (16 kHz mono), transcript: for review in the composer
    send_clip = Signal(object)  # audio: "send at once"
    message = Signal(str)  # something the user should read (errors, "too short", "cancelled")
    state_changed = Signal(str)

    def __init__(self, composer, runner: TaskRunner, *, make_recorder: Callable[[], object],
                 transcribe: Callable[[object], object], send_at_once: Callable[[], bool],
                 max_seconds: Callable[[], float], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.composer = composer
        self.runner = runner
        self._make_recorder = make_recorder
        self._transcribe = transcribe
        self._send_at_once = send_at_once
        self._max_seconds = max_seconds
        self.state = "idle"
        self.available = False
        self.reason = "checking for a microphone…"
        self.recorder = None
        self._task: Task | None = None
        self._timer = QTimer(self, interval=POLL_MS)
        self._timer.timeout.connect(self._tick)
        composer.mic_pressed.connect(self.press)
        composer.mic_released.connect(self.release)
        composer.set_mic_available(False, self.reason)

    def set_available(self, available: bool, reason: str) -> None:
        self.available = available
        self.reason = reason
        self.composer.set_mic_available(available, reason)

    def _set_state(self, state: str) -> None:
        self.state = state
        self.state_changed.emit(state)

    # -- recording -------------------------------------------------------------------------------
    def press(self) -> None:
        if self.state != "idle":
            return
        if not self.available:
            self.message.emit(f"Voice input is off: {self.reason}")
            return
        try:
            self.recorder = self._make_recorder()
            self.recorder.start()
        except MMChatError as exc:
            self.recorder = None
            self.message.emit(str(exc))
            return
        self._set_state("recording")
        self.composer.show_recording(True)
        self._timer.start()

    def _tick(self) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        try:
            recorder.check()
        except MMChatError as exc:
            self._abort(str(exc))
            return
        self.composer.update_recording(recorder.level, recorder.elapsed_s, self._max_seconds())
        if recorder.full:
            self.message.emit(f"Reached the maximum length ({int(self._max_seconds())} s).")
            self.release()

    def release(self) -> None:
        if self.state != "recording":
            return
        self._timer.stop()
        self.composer.show_recording(False)
        recorder, self.recorder = self.recorder, None
        try:
            audio = recorder.stop()
        except MMChatError as exc:
            self._set_state("idle")
            self.message.emit(str(exc))
            return
        from mmchat.recorder import MIN_CLIP_S

        if len(audio) < MIN_CLIP_S * SAMPLE_RATE:
            self._set_state("idle")
            self.message.emit("Too short: hold the mic button (or F8) while you speak.")
            return
        if self._send_at_once():
            self._set_state("idle")
            self.send_clip.emit(audio)
            return
        self._set_state("transcribing")
        self.composer.set_status("Transcribing…")
        task = Task("transcribe", lambda emit, stop: self._transcribe(audio))
        self._task = task
        self.runner.start(task, succeeded=lambda result: self._transcribed(task, audio, result),
                          failed=lambda text: task is self._task and self.message.emit(text),
                          finished=lambda: self._transcription_finished(task))

    def cancel(self) -> bool:
        """Esc: drop the recording (or the transcription in progress). True if there was one."""
        if self.state == "recording":
            self._timer.stop()
            self.composer.show_recording(False)
            recorder, self.recorder = self.recorder, None
            recorder.cancel()
            self._set_state("idle")
            self.message.emit("Recording cancelled.")
            return True
        if self.state == "transcribing" and self._task is not None:
            self._task.stop.set()
            self._task = None
            self.composer.set_status("")
            self._set_state("idle")
            return True
        return False

    def _abort(self, reason: str) -> None:
        self._timer.stop()
        self.composer.show_recording(False)
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.cancel()
        self._set_state("idle")
        self.message.emit(reason)

    # -- transcription ---------------------------------------------------------------------------
    def _transcribed(self, task: Task, audio, result) -> None:
        if task is not self._task:
            return  # cancelled meanwhile
        text = (getattr(result, "text", result) or "").strip()
        if not text:
            self.message.emit("No speech was heard in the recording.")
            return
        self.transcribed.emit(audio, text)

    def _transcription_finished(self, task: Task) -> None:
        if task is self._task:
            self._task = None
            self.composer.set_status("")
            self._set_state("idle")

    def shutdown(self) -> None:
        self._timer.stop()
        if self.recorder is not None:
            self.recorder.cancel()
            self.recorder = None
