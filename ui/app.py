"""Start the desktop app: window first, models after.

:func:`run` builds the window from settings and the conversation store (no model code is imported
on this path), shows it, and only after its first paint starts loading models in the background.
``run(screenshot=PATH)`` shows the most recent conversation of the data folder instead, loads no
model, saves a PNG of the window and exits 0: the README's pictures are real replies, made by
``scripts/screenshots.sh``. ``demo=True`` shows a built-in demo conversation (scripted, for layout
tests) and reads nothing of the user's but the theme.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, QtMsgType, QTimer, qInstallMessageHandler
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from mmchat import paths
from mmchat import settings as settings_mod
from mmchat.errors import MMChatError
from mmchat.store import ConversationStore
from mmchat_ui import icons, theme
from mmchat_ui.crash import CrashHandler
from mmchat_ui.main_window import MainWindow
from mmchat_ui.services import default_services

log = logging.getLogger(__name__)

SCREENSHOT_SIZE = (1280, 960)  # logical px
SCREENSHOT_SETTLE_MS = 400  # let layouts and the first scroll settle before grabbing
LOG_FILE = "mmchat.log"
LOG_MAX_BYTES = 1_000_000  # bytes per log file before it rotates
LOG_BACKUPS = 3  # rotated files kept (mmchat.log.1 … .3)


def seconds_since_launch() -> float | None:
    """Wall time since this process started (Linux /proc), or None where that is not known."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class _FirstPaint(QObject):
    """Calls ``then`` once, right after the window's first paint."""

    def __init__(self, window, then) -> None:
        super().__init__(window)
        self._then = then
        window.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Paint:
            watched.removeEventFilter(self)
            QTimer.singleShot(0, self._then)
        return False


_QT_LEVELS = {QtMsgType.QtDebugMsg: logging.DEBUG, QtMsgType.QtInfoMsg: logging.INFO,
              QtMsgType.QtWarningMsg: logging.WARNING, QtMsgType.QtCriticalMsg: logging.ERROR,
              QtMsgType.QtFatalMsg: logging.CRITICAL}
_QT_NOISE = ("propagateSizeHints",)  # the offscreen platform says this for every window


def _qt_message(kind, _context, message: str) -> None:
    """Qt's own messages go through logging (and the offscreen platform's chatter is dropped)."""
    if any(noise in message for noise in _QT_NOISE):
        return
    logging.getLogger("qt").log(_QT_LEVELS.get(kind, logging.WARNING), "%s", message)


def _application() -> QApplication:
    qInstallMessageHandler(_qt_message)
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "mmchat"])
    app.setApplicationName("mmchat")
    app.setApplicationDisplayName("mmchat")
    app.setDesktopFileName("mmchat")
    font = app.font()
    font.setPointSizeF(theme.UI_FONT_PT)
    app.setFont(font)
    return app


def log_to_file(directory: Path | None = None) -> Path | None:
    """Send log records to ``<data dir>/mmchat.log``, rotated at LOG_MAX_BYTES with LOG_BACKUPS old files."""
    from logging.handlers import RotatingFileHandler

    try:
        path = (directory or paths.data_dir()) / LOG_FILE
        handler = RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    except OSError:
        return None
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return path


def _open_store(loaded) -> tuple[ConversationStore, str | None]:
    """The user's conversation store; if it cannot be opened at all, a temporary one and why."""
    try:
        store = ConversationStore(loaded.settings.database_path())
        return store, store.notice
    except MMChatError as exc:
        log.error("conversation database unusable: %s", exc)
        return ConversationStore(":memory:"), (f"{exc} Conversations in this session are not saved.")


def start(app: QApplication, *, services=None) -> MainWindow:
    """Build the window from the settings and the user's data, with the crash handler installed;
    notices (a database moved aside, damaged settings) are shown in the window's banner."""
    loaded = settings_mod.load()
    manager = theme.ThemeManager(app, loaded.settings.theme)
    app_icon = icons.app_icon()
    app.setWindowIcon(app_icon if not app_icon.isNull() else icons.icon("sparkle", theme.current().accent))
    log_path = log_to_file()
    store, store_notice = _open_store(loaded)
    window = MainWindow(store=store, settings=loaded.settings, services=services or default_services(),
                        theme_manager=manager)
    window.crash_handler = CrashHandler(window, log_path=log_path)
    window.crash_handler.install()
    notices = [n for n in (store_notice, loaded.notice) if n]
    if notices:
        window.show_notice("\n\n".join(notices))
    return window


def run(*, screenshot: Path | None = None, demo: bool = False) -> int:
    app = _application()
    if screenshot is not None:
        return _screenshot(app, Path(screenshot), demo=demo)
    window = start(app)

    def painted() -> None:
        elapsed = seconds_since_launch()
        if elapsed is not None:
            log.info("first window painted %.2f s after launch (%.2f s of CPU)", elapsed, time.process_time())
        window.start_background_work()
        window.maybe_show_welcome()

    _FirstPaint(window, painted)
    window.show()
    return app.exec()


def _screenshot(app: QApplication, path: Path, *, demo: bool) -> int:
    """The window with the most recent conversation (or the demo's), rendered to ``path``; no model loads."""
    from mmchat_ui.demo import demo_services, fill_demo_store

    loaded = settings_mod.load()
    manager = theme.ThemeManager(app, loaded.settings.theme)
    if demo:
        store = ConversationStore(":memory:")
        shown = fill_demo_store(store)
    else:
        store = ConversationStore(loaded.settings.database_path())
        conversations = store.list_conversations()
        if not conversations:
            print(f"mmchat: no conversation in {loaded.settings.database_path()} to take a screenshot of "
                  "(--demo shows a built-in one)", file=sys.stderr)
            return 1
        shown = conversations[0].id
    window = MainWindow(store=store, settings=loaded.settings, services=demo_services(), theme_manager=manager,
                        save_settings=False)
    window.resize(*SCREENSHOT_SIZE)
    window.sidebar.refresh()
    window.open_conversation(shown)
    window.show()
    window.start_background_work()
    result = {"code": 1}

    def grab() -> None:
        window.chat.scroll_to_bottom()
        image = window.grab()
        path.parent.mkdir(parents=True, exist_ok=True)
        if image.save(str(path)):
            result["code"] = 0
            log.info("screenshot saved to %s (%dx%d)", path, image.width(), image.height())
        else:
            print(f"mmchat: could not write the screenshot to {path}", file=sys.stderr)
        window.close()
        app.quit()

    QTimer.singleShot(SCREENSHOT_SETTLE_MS, grab)
    app.exec()
    return result["code"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(run())
