"""Screenshots for the README, made by the suite into test-results/screenshots/ (scripts/screenshots.sh
copies them to docs/screenshots/): the window in the light and dark theme via ``mmchat app
--screenshot``, showing a conversation the real shipped models just had about a real photo and a
rendered screenshot (nothing scripted), and the first-run welcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from mmchat import registry
from mmchat.engine import SlotStatus
from mmchat_ui import theme
from mmchat_ui.welcome import WelcomeDialog

pytestmark = pytest.mark.gui
SHOTS = Path(__file__).resolve().parent.parent / "test-results" / "screenshots"
SIZE = (1280, 960)  # px, ui/app.py SCREENSHOT_SIZE
TURNS = (("What is in this picture?", "cat"), ("Which error is shown in this screenshot?", "FileNotFoundError"))


def _mean_lightness(image: QImage) -> float:
    samples = [image.pixelColor(x, y).lightnessF() for x in range(0, image.width(), 23)
               for y in range(0, image.height(), 19)]
    return sum(samples) / len(samples)


@pytest.fixture(scope="module")
def conversation(engine, tmp_path_factory):
    """A data folder holding one conversation of the real models: the cat photo, then a terminal error."""
    import numpy as np

    from mmchat.chat import ChatSession
    from mmchat.llm import GenerationConfig
    from mmchat.store import ConversationStore
    from mmchat.vision.eval_sets import ERRORS, _page, load_photo

    data = tmp_path_factory.mktemp("screenshot-data")
    store = ConversationStore(data / "mmchat.sqlite3")
    session = ChatSession(engine, store, generation=GenerationConfig(max_new_tokens=120, temperature=0.0))
    name, message = next(e for e in ERRORS if e[0] == TURNS[1][1])
    error = _page(np.random.default_rng(4), [("$ python report.py", False), ("Traceback (most recent call last):", False),
                                             ('  File "/home/ada/report.py", line 12, in <module>', False),
                                             (f"{name}: {message}", True)], mono=True, size=(1150, 300))
    replies = []
    for (question, _), image in zip(TURNS, (load_photo("chelsea"), error)):
        replies.append("".join(e.text for e in session.send(question, images=[image]) if e.kind == "token"))
    store.close()
    return data, replies


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light", "dark"])
def test_window_screenshot_of_a_real_conversation_in_each_theme(name, conversation, tmp_path):
    data, replies = conversation
    for (_, expected), reply in zip(TURNS, replies):
        assert expected.lower() in reply.lower(), reply  # what the README shows is a right answer
    (data / "settings.json").write_text(json.dumps({"theme": name}))
    out = SHOTS / f"app-{name}.png"
    out.unlink(missing_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MMCHAT_DATA_DIR=str(data))
    result = subprocess.run([sys.executable, "-m", "mmchat.cli", "-v", "app", "--screenshot", str(out)],
                            capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    assert "screenshot saved" in result.stderr and "welcome" not in result.stderr  # never in screenshots
    image = QImage(str(out))
    assert (image.width(), image.height()) == SIZE
    lightness = _mean_lightness(image)
    assert lightness > 0.6 if name == "light" else lightness < 0.35


def test_a_screenshot_needs_a_conversation_or_the_demo(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MMCHAT_DATA_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "mmchat.cli", "app", "--screenshot", str(tmp_path / "x.png")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1 and "no conversation" in result.stderr and "--demo" in result.stderr


def _home_relative(path: str) -> Path:
    return Path("~") / Path(path).relative_to(Path.home()) if Path(path).is_relative_to(Path.home()) else Path(path)


def test_welcome_screenshot(qtbot):
    """The welcome with the platform's default folders (shown from the home folder, as a user sees them)."""
    app = QApplication.instance()
    manager = getattr(app, "_test_theme_manager", None)  # shared with ui_helpers.make_window
    if manager is None:
        manager = app._test_theme_manager = theme.ThemeManager(app, "light")
    manager.apply("light")
    dialog = WelcomeDialog(data_dir=_home_relative(platformdirs.user_data_dir("mmchat")),
                           cache_dir=_home_relative(platformdirs.user_cache_dir("mmchat")))
    qtbot.addWidget(dialog)
    llm = registry.default(registry.Role.LLM).name
    dialog.update_status(SlotStatus("llm", llm, "loading", "converting (one time)", 0.4))
    dialog.show()
    qtbot.waitExposed(dialog)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert dialog.grab().save(str(SHOTS / "welcome.png"))
    assert "mmchat models fetch clip-vit-b-32" in dialog.paragraphs[-1] and "OCR" in dialog.paragraphs[-1]
