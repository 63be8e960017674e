"""Fixtures and helpers shared by the test_ui_* files (imported by them; not a test module).

Fast tests drive the real window with :class:`mmchat_ui.demo.DemoEngine` (a scripted LLM that
streams word by word and honours Stop per token); the ``slow`` tests use the real models.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication

from mmchat.settings import Settings
from mmchat.store import ConversationStore
from mmchat_ui import theme
from mmchat_ui.demo import DemoEngine, DemoLLM, demo_services
from mmchat_ui.main_window import MainWindow

WAIT_MS = 30_000  # generous: the first turn imports torch (~12 s here), and the CPU is shared


@pytest.fixture
def make_window(qtbot, data_dir):
    """``make_window(engine=..., services=..., settings=..., store=...)`` -> a shown MainWindow."""
    app = QApplication.instance()
    manager = getattr(app, "_test_theme_manager", None)
    if manager is None:
        manager = app._test_theme_manager = theme.ThemeManager(app, "light")

    def make(engine=None, *, services=None, settings=None, store=None, save_settings=False, **service_options):
        settings = settings or Settings()
        store = store or ConversationStore(settings.database_path())
        services = services or demo_services(engine or DemoEngine(), **service_options)
        window = MainWindow(store=store, settings=settings, services=services,
                            theme_manager=manager, save_settings=save_settings)
        qtbot.addWidget(window)
        window.resize(1100, 760)
        with qtbot.waitActive(window):  # shortcuts and focus need the active window
            window.show()
            window.activateWindow()
        window.start_background_work()
        return window

    yield make
    manager.apply("light")


def type_and_send(qtbot, window, text: str) -> None:
    window.composer.edit.setFocus()
    qtbot.keyClicks(window.composer.edit, text)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


def wait_idle(qtbot, window, timeout: int = WAIT_MS) -> None:
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=timeout)


def wait_reply(qtbot, window, timeout: int = WAIT_MS):
    wait_idle(qtbot, window, timeout)
    reply = window.chat.last_reply()
    assert reply is not None
    return reply


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=QPoint(widget.width() // 2, widget.height() // 2))


def slow_llm(text: str, delay_s: float = 0.02) -> DemoLLM:
    return DemoLLM(text, delay_s=delay_s)


def words(n: int) -> str:
    return " ".join(f"word{i}" for i in range(n))


def tone(seconds: float, rate: int = 16_000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


class FeedingStream:
    """Stands in for ``sounddevice.InputStream``: once started, a thread pushes ``clip`` through the
    recorder's callback in blocks (``speed`` times real time), then silence, like a live microphone."""

    def __init__(self, clip: np.ndarray, samplerate: int, *, callback, finished_callback=None,
                 speed: float = 4.0, block: int = 800, fail_after_s: float | None = None, **_kwargs):
        import threading

        self.clip = np.asarray(clip, dtype=np.float32)
        self.samplerate = samplerate
        self.callback, self.finished_callback = callback, finished_callback
        self.speed, self.block, self.fail_after_s = speed, block, fail_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self.fed = 0

    def _feed(self) -> None:
        import time

        silence = np.zeros(self.block, dtype=np.float32)
        while not self._stop.is_set():
            if self.fail_after_s is not None and self.fed >= self.fail_after_s * self.samplerate:
                if self.finished_callback:
                    self.finished_callback()  # what PortAudio does when the device goes away
                return
            chunk = self.clip[self.fed:self.fed + self.block] if self.fed < len(self.clip) else silence
            self.callback(chunk.reshape(-1, 1), len(chunk), None, None)
            self.fed += len(chunk)
            time.sleep(len(chunk) / self.samplerate / self.speed)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.finished_callback:
            self.finished_callback()

    def close(self) -> None:
        self._stop.set()


def fake_microphone(clip: np.ndarray, samplerate: int = 16_000, **stream_options):
    """A ``make_recorder`` service whose recorder hears ``clip`` through a :class:`FeedingStream`."""
    from mmchat.recorder import Recorder

    streams = []

    def make(settings):
        def factory(**kwargs):
            stream = FeedingStream(clip, samplerate, **stream_options, **kwargs)
            streams.append(stream)
            return stream
        return Recorder(device=settings.input_device, max_seconds=settings.max_recording_s, stream_factory=factory)

    make.streams = streams
    return make
