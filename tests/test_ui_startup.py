"""Start-up: the window is on screen fast, before any model code is imported; and the
``--screenshot`` command renders the demo conversation to a PNG and exits 0."""

import os
import re
import selectors
import signal
import subprocess
import sys
import time

import pytest
from PySide6.QtGui import QImage

FIRST_WINDOW_LIMIT_S = 1.5

pytestmark = pytest.mark.gui


def _env(data_dir) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MMCHAT_DATA_DIR=str(data_dir))
    return env


def test_app_import_path_keeps_the_models_out():
    code = ("import sys, mmchat_ui.app, mmchat_ui.main_window; "
            "heavy = [m for m in ('torch', 'transformers', 'mmchat.chat', 'mmchat.llm', 'numpy') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_first_window_is_painted_within_the_limit(data_dir):
    """Launch ``mmchat -v app`` and read the time of its first paint from its log, then stop it."""
    process = subprocess.Popen([sys.executable, "-m", "mmchat.cli", "-v", "app"], stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=_env(data_dir), start_new_session=True)
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    seconds, log = None, b""
    deadline = time.monotonic() + 60
    try:
        while seconds is None and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1):
                line = process.stderr.readline()
                log += line
                match = re.search(rb"first window painted ([0-9.]+) s after launch \(([0-9.]+) s of CPU\)", line)
                if match:
                    seconds, cpu = float(match.group(1)), float(match.group(2))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert seconds is not None, log.decode(errors="replace")[-2000:]
    # The CPU the app spends before its first paint is what the app controls; the wall time also
    # depends on what else runs. On an oversubscribed machine (load above the core count) the wall
    # limit is scaled by the oversubscription, so the test measures the app, not the neighbours.
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print(f"first window painted {seconds:.2f} s after launch, {cpu:.2f} s of CPU, load {load:.1f}x")
    assert cpu <= FIRST_WINDOW_LIMIT_S
    assert seconds <= FIRST_WINDOW_LIMIT_S * max(1.0, load)


def test_screenshot_command_renders_the_demo(tmp_path, data_dir):
    out = tmp_path / "shot.png"
    result = subprocess.run([sys.executable, "-m", "mmchat.cli", "app", "--screenshot", str(out), "--demo"],
                            capture_output=True, text=True, timeout=120, env=_env(data_dir))
    assert result.returncode == 0, result.stderr
    image = QImage(str(out))
    assert (image.width(), image.height()) == (1280, 960)
    colours = {image.pixelColor(x, y).name() for x in range(0, 1280, 37) for y in range(0, 960, 29)}
    assert len(colours) > 20  # a real rendering, not a blank window
    assert not (data_dir / "mmchat.sqlite3").exists()  # the demo never touches the user's conversations
