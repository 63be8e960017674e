"""Read replies aloud with the offline piper voice, off the GUI thread, stoppable at any time."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from mmchat_ui import markdown
from mmchat_ui.workers import Task, TaskRunner


class ReadAloud(QObject):
    speaking_changed = Signal(bool)
    message = Signal(str)

    def __init__(self, runner: TaskRunner, *, make_speaker: Callable[[], object],
                 make_output: Callable[[int], object], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._make_speaker = make_speaker
        self._make_output = make_output
        self._task: Task | None = None
        self.available = True
        self.reason = ""

    @property
    def speaking(self) -> bool:
        return self._task is not None

    def set_available(self, available: bool, reason: str) -> None:
        self.available, self.reason = available, reason

    def speak(self, text: str) -> None:
        """Read ``text`` (a reply, Markdown) aloud, replacing whatever is being read now."""
        self.stop()
        if not self.available:
            self.message.emit(f"Read-aloud is off: {self.reason}")
            return
        speech = markdown.speakable(text)
        if not speech:
            return

        def work(emit, stop):
            speaker = self._make_speaker()
            output = self._make_output(speaker.sample_rate)
            output.play(speaker.stream(speech, stop=stop), stop=stop)

        task = Task("read-aloud", work)
        self._task = task
        self.speaking_changed.emit(True)
        self.runner.start(task, failed=self.message.emit, finished=lambda: self._finished(task))

    def stop(self) -> bool:
        """Stop reading; True if something was being read."""
        task, self._task = self._task, None
        if task is None:
            return False
        task.stop.set()
        self.speaking_changed.emit(False)
        return True

    def _finished(self, task: Task) -> None:
        if task is self._task:
            self._task = None
            self.speaking_changed.emit(False)
