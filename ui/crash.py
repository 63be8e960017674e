"""The app's crash handler: a bug is written to a report file and shown in a dialog; the app goes on.

:class:`CrashHandler` installs ``sys.excepthook`` (GUI thread and anything else reaching the top)
and ``threading.excepthook`` (plain threads). The report is written where the error happened
(:func:`mmchat.crash_report.write_report`); the dialog is shown on the GUI thread through a queued
signal. The dialog is non-modal, so the window stays usable and tests can read it.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from mmchat.crash_report import write_report
from mmchat_ui.workers import QUEUED

log = logging.getLogger(__name__)


class CrashHandler(QObject):
    reported = Signal(str, str)  # report path ("" if it could not be written), one-line summary

    def __init__(self, window: QWidget, *, log_path: Path | None = None) -> None:
        super().__init__(window)
        self.window = window
        self.log_path = log_path
        self.dialog: QMessageBox | None = None
        self.reports: list[Path] = []
        self._previous_sys = sys.excepthook
        self._previous_threading = threading.excepthook
        self.reported.connect(self._show, QUEUED)

    def install(self) -> None:
        sys.excepthook = self.handle_exception
        threading.excepthook = self.handle_thread_exception

    def uninstall(self) -> None:
        if sys.excepthook == self.handle_exception:
            sys.excepthook = self._previous_sys
        if threading.excepthook == self.handle_thread_exception:
            threading.excepthook = self._previous_threading

    def handle_exception(self, kind, value, tb, *, thread: str | None = None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            self._previous_sys(kind, value, tb)
            return
        log.critical("unhandled error%s", f" in thread {thread}" if thread else "", exc_info=(kind, value, tb))
        path = write_report(kind, value, tb, thread=thread)
        if path is not None:
            self.reports.append(path)
        self.reported.emit(str(path or ""), f"{kind.__name__}: {value}")

    def handle_thread_exception(self, args) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "unknown thread"
        self.handle_exception(args.exc_type, args.exc_value, args.exc_traceback, thread=name)

    def _show(self, path: str, summary: str) -> None:
        where = f"A report was saved to {path}." if path else "No report could be saved."
        if self.log_path is not None:
            where += f" The log is {self.log_path}."
        text = f"Something went wrong: {summary}. This is a bug; mmchat carries on. {where}"
        try:
            self.window.show_notice(text)
        except RuntimeError:  # the window is gone
            return
        if self.dialog is None:
            self.dialog = QMessageBox(QMessageBox.Icon.Warning, "mmchat: a bug", "", QMessageBox.StandardButton.Close,
                                      self.window)
            self.dialog.setModal(False)
        self.dialog.setText(text)
        if path:
            self.dialog.setDetailedText(Path(path).read_text(encoding="utf-8", errors="replace"))
        self.dialog.show()
