"""First-run welcome (once, non-modal, conversion progress) and Help → About (doctor's facts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication

from mmchat import __version__, doctor, paths, registry
from mmchat import settings as settings_mod
from mmchat.engine import SlotStatus
from mmchat.settings import Settings
from ui_helpers import make_window  # noqa: F401  (fixture)

pytestmark = pytest.mark.gui
SHOTS = Path(__file__).resolve().parent.parent / "test-results" / "screenshots"


def test_welcome_is_shown_once_without_blocking_and_remembered(qtbot, make_window, data_dir):
    window = make_window(save_settings=True)
    dialog = window.maybe_show_welcome()
    assert dialog is not None and dialog.isVisible() and not dialog.isModal()
    text = "\n".join(dialog.paragraphs)
    assert str(data_dir) in text and str(paths.cache_dir()) in text
    assert "mmchat models fetch clip-vit-b-32" in text
    assert "offline" in text
    # The window still takes input while the welcome is open.
    window.composer.edit.setFocus()
    qtbot.keyClicks(window.composer.edit, "hello")
    assert window.composer.edit.toPlainText() == "hello"
    SHOTS.mkdir(parents=True, exist_ok=True)
    dialog.grab().save(str(SHOTS / "welcome.png"))
    with qtbot.waitSignal(dialog.finished):
        dialog.accept()
    assert window.settings.welcome_shown
    assert settings_mod.load().settings.welcome_shown  # saved
    assert window.maybe_show_welcome() is None


def test_welcome_shows_the_conversion_progress(qtbot, make_window):
    window = make_window()
    dialog = window.maybe_show_welcome()
    llm = registry.default(registry.Role.LLM).name
    window._bridge.status.emit(window.engine, SlotStatus("llm", llm, "loading", "converting (one time)", 0.4))
    qtbot.waitUntil(lambda: dialog.progress.isVisible())
    assert dialog.progress.value() == 400
    assert "converting (one time)" in dialog.progress_label.text() and llm in dialog.progress_label.text()
    window._bridge.status.emit(window.engine, SlotStatus("llm", llm, "ready"))
    qtbot.waitUntil(lambda: not dialog.progress.isVisible())
    assert "ready" in dialog.progress_label.text()
    dialog.close()


def test_welcome_is_not_shown_again_when_the_settings_say_so(make_window):
    window = make_window(settings=Settings(welcome_shown=True))
    assert window.maybe_show_welcome() is None


def test_about_dialog_shows_what_doctor_reports(qtbot, make_window):
    window = make_window()
    window.show_help()
    help_dialog = window._help
    help_dialog.about_button.click()
    about = window._about
    with qtbot.waitSignal(about.loaded, timeout=60_000):
        pass
    expected = doctor.report()
    models = about.table_text(about.models_table)
    assert [row[0].removesuffix(" (default)") for row in models] == [m.name for m in registry.MODELS]
    for row, m in zip(models, expected["models"]):
        assert row[1:4] == [m["role"], m["licence"], m["state"]]
    assert dict(about.table_text(about.paths_table)) == expected["paths"]
    versions = dict(about.table_text(about.tabs.widget(2)))
    assert versions["mmchat"] == __version__ and versions["Python"] == sys.version.split()[0]
    about.copy_details()
    assert QGuiApplication.clipboard().text() == doctor.format_report(about.report)
    SHOTS.mkdir(parents=True, exist_ok=True)
    about.grab().save(str(SHOTS / "about.png"))
    about.close()
    help_dialog.close()


def _app_log_until(data_dir: Path, pattern: bytes, *, timeout_s: float = 90, linger_s: float = 0) -> bytes:
    """Run ``mmchat -v app`` until its log shows ``pattern`` (or it times out) and ``linger_s`` more,
    then stop it; its log."""
    import os
    import selectors
    import signal
    import subprocess
    import time

    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MMCHAT_DATA_DIR=str(data_dir))
    process = subprocess.Popen([sys.executable, "-m", "mmchat.cli", "-v", "app"], stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=env, start_new_session=True)
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    log, deadline = b"", time.monotonic() + timeout_s
    try:
        while pattern not in log and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1):
                log += process.stderr.readline()
        until = time.monotonic() + linger_s
        while time.monotonic() < until and process.poll() is None:
            if selector.select(timeout=max(0.0, until - time.monotonic())):
                log += process.stderr.readline()
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return log


def test_the_app_shows_the_welcome_on_the_first_start_only(tmp_path):
    first = _app_log_until(tmp_path / "first", b"first-run welcome")
    assert b"showing the first-run welcome" in first, first.decode(errors="replace")[-2000:]
    seen = tmp_path / "seen"
    settings_mod.save(Settings(welcome_shown=True), seen / settings_mod.FILE_NAME)
    later = _app_log_until(seen, b"first window painted", linger_s=3)  # the welcome would follow at once
    assert b"first window painted" in later and b"first-run welcome" not in later
