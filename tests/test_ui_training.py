"""Fusion training from the app: progress in the status bar, chat waits, Stop ends it, sessions
pick up the new checkpoint. The training itself is a stand-in here (mmchat.fusion_train has its own
tests); this checks the app's side of it."""

import time

import pytest
from PySide6.QtCore import Qt

from mmchat_ui.demo import DemoEngine, DemoLLM
from mmchat_ui.training import TrainingStopped
from ui_helpers import WAIT_MS, click, make_window, type_and_send, wait_reply  # noqa: F401

pytestmark = pytest.mark.gui


def fake_training(steps=200, delay_s=0.01):
    calls = []

    def train(engine, progress, stop):
        calls.append(engine)
        progress("preparing data", 0, 0)
        for step in range(1, steps + 1):
            if stop.is_set():
                raise TrainingStopped
            time.sleep(delay_s)
            progress("training", step, steps)
        return {"heldout": {"accuracy": 0.9}}

    train.calls = calls
    return train


def test_training_shows_progress_and_finishes(qtbot, make_window):
    train = fake_training(steps=30)
    window = make_window(DemoEngine(DemoLLM("ok")), train_fusion=train)
    type_and_send(qtbot, window, "before")
    wait_reply(qtbot, window)
    ref = window.controller.current
    assert ref.signature
    window.open_settings()
    dialog = window._settings_dialog
    click(qtbot, dialog.train_button)
    dialog.reject()
    assert window.training.running
    qtbot.waitUntil(lambda: "training" in window.status.training.text(), timeout=WAIT_MS)
    assert train.calls == [window.engine]
    assert window.status.training_progress.isVisible()
    qtbot.waitUntil(lambda: not window.training.running, timeout=WAIT_MS)
    assert not window.status.training.isVisible()
    assert "finished" in window.status.currentMessage()
    assert ref.signature == ()  # the session is rebuilt with the new checkpoint before its next turn
    type_and_send(qtbot, window, "after")
    assert wait_reply(qtbot, window).text == "ok"


def test_chat_waits_while_training_and_stop_ends_it(qtbot, make_window):
    window = make_window(train_fusion=fake_training(steps=10_000))
    window.start_training()
    qtbot.waitUntil(lambda: "training" in window.status.training.text(), timeout=WAIT_MS)
    type_and_send(qtbot, window, "hello?")
    assert not window.controller.busy and "fusion training" in window.composer.error.text()
    assert window.composer.text() == "hello?"  # nothing lost
    click(qtbot, window.status.training_stop)
    qtbot.waitUntil(lambda: not window.training.running, timeout=WAIT_MS)
    assert "carries on where it left off" in window.status.currentMessage()
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    wait_reply(qtbot, window)
    assert window.chat.messages()[0].text == "hello?"


def test_closing_the_window_stops_training(qtbot, make_window):
    window = make_window(train_fusion=fake_training(steps=10_000))
    window.start_training()
    qtbot.waitUntil(lambda: "training" in window.status.training.text(), timeout=WAIT_MS)
    started = time.monotonic()
    window.close()
    assert time.monotonic() - started < 5 and window.runner.pool.activeThreadCount() == 0
