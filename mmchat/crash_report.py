"""Crash reports: what a bug leaves behind for the user to send (no Qt here; the app shows them).

:func:`write_report` puts the traceback, the time, the thread, and the versions of mmchat, Python,
the OS and the main libraries into ``<data dir>/crash-reports/crash-<UTC time>.txt`` and returns
its path. It never raises: a crash handler that crashes hides the first bug.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType

from mmchat import __version__, paths

log = logging.getLogger(__name__)

REPORTS_DIR = "crash-reports"
KEEP_REPORTS = 50  # older reports are removed beyond this many
LIBRARIES = ("torch", "transformers", "numpy", "PIL", "PySide6", "soundfile", "sounddevice")


def reports_dir() -> Path:
    return paths.data_dir() / REPORTS_DIR


def versions() -> dict[str, str]:
    """mmchat, Python, OS and the versions of the libraries already imported (nothing is imported here)."""
    found = {"mmchat": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in LIBRARIES:
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "?"))
    return found


def format_report(traceback_text: str, *, thread: str | None = None, when: float | None = None) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when if when is not None else time.time()))
    lines = [f"mmchat crash report, {stamp}", f"thread: {thread or 'main'}", f"pid: {os.getpid()}", ""]
    lines += [f"{name}: {version}" for name, version in versions().items()]
    lines += ["", traceback_text.rstrip()]
    return "\n".join(lines) + "\n"


def write_report(kind: type[BaseException], value: BaseException, tb: TracebackType | None, *,
                 thread: str | None = None, directory: Path | None = None) -> Path | None:
    """Write one report; returns its path, or None if it could not be written (that is logged)."""
    text = "".join(traceback.format_exception(kind, value, tb))
    return write_traceback(text, thread=thread, directory=directory)


def write_traceback(traceback_text: str, *, thread: str | None = None, directory: Path | None = None) -> Path | None:
    """:func:`write_report` for a traceback already formatted (a worker task's)."""
    try:
        directory = directory or reports_dir()
        directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
        path = directory / f"crash-{stamp}.txt"
        counter = 1
        while path.exists():
            path = directory / f"crash-{stamp}-{counter}.txt"
            counter += 1
        path.write_text(format_report(traceback_text, thread=thread, when=now), encoding="utf-8")
        _prune(directory)
        return path
    except Exception:  # noqa: BLE001 - see the module docstring
        log.exception("could not write a crash report")
        return None


def _prune(directory: Path) -> None:
    reports = sorted(directory.glob("crash-*.txt"))
    for old in reports[:-KEEP_REPORTS]:
        old.unlink(missing_ok=True)
