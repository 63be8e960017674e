"""Work off the GUI thread: :class:`Task` s in a :class:`TaskRunner`'s thread pool.

After git-cola's ``qtutils`` tasks: a ``QRunnable`` runs a plain function in a pool thread and
reports through a ``QObject`` that lives on the GUI thread, so every signal reaches its slot queued,
on the GUI thread. The function gets an ``emit`` callable for progress (tokens, levels) and a
``threading.Event`` it checks to stop early. Expected trouble (:class:`MMChatError`) arrives as
``failed`` with its user-facing message; anything else is a bug: logged with its traceback and
reported as ``crashed``. :meth:`TaskRunner.shutdown` stops every task and waits for the pool.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, Signal

from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

MAX_THREADS = 4  # model loading, a reply, a transcription and read-aloud can overlap
RELEASE_AFTER_MS = 1000  # a finished task object is kept this long before it may be freed
BACKGROUND_NICE = 5  # Linux nice value of pool threads (and the torch threads they start)
# How long a Python thread keeps the GIL once another thread asks for it. The GUI thread asks at
# every slot and every Python override it runs, several times per frame; at Python's default 5 ms a
# worker busy in pure Python (OCR's config building, imports) stretched one 10 ms timer tick to
# 40-50 ms. At 1 ms the longest tick while a photo is seen and answered measured 26-47 ms (12 runs).
GIL_SWITCH_INTERVAL_S = 0.001

_lowered = threading.local()


def lower_thread_priority() -> None:
    """Make the calling thread yield the CPU to the GUI thread (Linux: per-thread nice).

    Model work saturates every core; at equal priority the GUI thread waits its turn behind torch's
    threads and the window stutters. Threads this thread starts (torch's OpenMP pool is created by
    the first model call, which runs in the pool) inherit the lower priority."""
    if getattr(_lowered, "done", False) or not hasattr(os, "setpriority"):
        return
    _lowered.done = True
    try:
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(current, BACKGROUND_NICE))
    except OSError as exc:  # not permitted here: carry on at normal priority
        log.debug("could not lower the priority of %s: %s", threading.current_thread().name, exc)

Work = Callable[[Callable[[Any], None], threading.Event], Any]  # (emit, stop) -> result
QUEUED = Qt.ConnectionType.QueuedConnection


class TaskSignals(QObject):
    progress = Signal(object)
    succeeded = Signal(object)
    failed = Signal(str)  # MMChatError, as its message
    crashed = Signal(str)  # a bug, as its traceback
    finished = Signal()  # always last


class Task(QRunnable):
    """One piece of work. Create it on the GUI thread (its signals object must live there)."""

    def __init__(self, name: str, work: Work) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the runner owns it until ``finished`` has been delivered
        self.name = name
        self.work = work
        self.stop = threading.Event()
        self.signals = TaskSignals()

    def run(self) -> None:
        lower_thread_priority()
        try:
            result = self.work(self.signals.progress.emit, self.stop)
        except MMChatError as exc:
            self.signals.failed.emit(str(exc))
        except Exception:  # a bug: keep the app alive, but say so and log it in full
            log.exception("task %s crashed", self.name)
            self.signals.crashed.emit(traceback.format_exc())
        else:
            self.signals.succeeded.emit(result)
        finally:
            self.signals.finished.emit()


class TaskRunner(QObject):
    """Starts tasks, keeps them alive while they run, and waits for them on shutdown."""

    crashed = Signal(str, str)  # task name, traceback: for the app's crash reporting

    def __init__(self, parent: QObject | None = None, *, max_threads: int = MAX_THREADS) -> None:
        super().__init__(parent)
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._tasks: set[Task] = set()  # started and not yet released
        self._finished: set[Task] = set()  # done, kept alive a little longer (see start)
        self._closing = False

    def start(self, task: Task, *, progress: Callable | None = None, succeeded: Callable | None = None,
              failed: Callable | None = None, finished: Callable | None = None) -> Task:
        if self._closing:
            return task
        s = task.signals
        if progress is not None:
            s.progress.connect(progress, QUEUED)
        if succeeded is not None:
            s.succeeded.connect(succeeded, QUEUED)
        if failed is not None:
            s.failed.connect(failed, QUEUED)
        s.crashed.connect(lambda text: self.crashed.emit(task.name, text), QUEUED)
        if finished is not None:
            s.finished.connect(finished, QUEUED)
        s.finished.connect(lambda: self._finished.add(task), QUEUED)
        # Drop our reference a while after the finished slots ran: not from inside them, and not
        # before the pool thread has returned from run() (it reads the runnable once more then).
        s.finished.connect(lambda: QTimer.singleShot(RELEASE_AFTER_MS, self, lambda: self._release(task)), QUEUED)
        self._tasks.add(task)
        self.pool.start(task)
        return task

    def _release(self, task: Task) -> None:
        self._tasks.discard(task)
        self._finished.discard(task)

    def running(self, name: str) -> list[Task]:
        return [t for t in self._tasks if t.name == name and t not in self._finished]

    def busy(self) -> bool:
        return bool(self._tasks - self._finished)

    def stop_all(self) -> None:
        for task in list(self._tasks):
            task.stop.set()

    def shutdown(self, timeout_ms: int = -1) -> bool:
        """Stop every task and wait for the pool (``timeout_ms`` < 0: as long as it takes)."""
        self._closing = True
        self.stop_all()
        done = self.pool.waitForDone(timeout_ms)
        if not done:
            log.warning("tasks still running at exit: %s", sorted(t.name for t in self._tasks))
        return done
