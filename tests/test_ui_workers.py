"""The task runner: work runs in the pool, results arrive on the GUI thread, errors are sorted into
expected trouble and bugs, Stop is an event the work checks, shutdown waits for the pool."""

import threading
import time

import pytest

from mmchat.errors import MMChatError
from mmchat_ui.workers import Task, TaskRunner

pytestmark = pytest.mark.gui


@pytest.fixture
def runner(qtbot):
    r = TaskRunner()
    yield r
    r.shutdown()


def test_work_runs_off_the_gui_thread_and_reports_on_it(qtbot, runner):
    gui = threading.get_ident()
    seen = {}

    def work(emit, stop):
        seen["worker"] = threading.get_ident()
        for i in range(3):
            emit(i)
        return "result"

    progress, threads = [], []
    task = Task("count", work)
    with qtbot.waitSignal(task.signals.finished, timeout=10_000):
        runner.start(task, progress=lambda v: (progress.append(v), threads.append(threading.get_ident())),
                     succeeded=lambda v: progress.append(v))
    assert seen["worker"] != gui
    assert progress == [0, 1, 2, "result"] and set(threads) == {gui}


def test_expected_trouble_and_bugs_are_told_apart(qtbot, runner, caplog):
    failures, crashes = [], []
    runner.crashed.connect(lambda name, tb: crashes.append((name, tb)))

    def trouble(emit, stop):
        raise MMChatError("The microphone is unplugged.")

    def bug(emit, stop):
        return 1 / 0

    first = Task("trouble", trouble)
    with qtbot.waitSignal(first.signals.finished, timeout=10_000):
        runner.start(first, failed=failures.append)
    second = Task("bug", bug)
    with qtbot.waitSignal(second.signals.finished, timeout=10_000):
        runner.start(second, failed=failures.append)
    qtbot.waitUntil(lambda: len(crashes) == 1, timeout=10_000)
    assert failures == ["The microphone is unplugged."]
    assert crashes[0][0] == "bug" and "ZeroDivisionError" in crashes[0][1]
    assert "task bug crashed" in caplog.text


def test_shutdown_sets_stop_and_waits_for_the_pool(qtbot):
    runner = TaskRunner()
    ended = threading.Event()

    def long_work(emit, stop):
        while not stop.is_set():
            time.sleep(0.01)
        ended.set()

    runner.start(Task("long", long_work))
    qtbot.waitUntil(lambda: runner.pool.activeThreadCount() == 1, timeout=10_000)
    assert runner.shutdown()
    assert ended.is_set() and runner.pool.activeThreadCount() == 0
    assert runner.start(Task("late", long_work)).stop.is_set() is False  # ignored after shutdown
    assert runner.pool.activeThreadCount() == 0
