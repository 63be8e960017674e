"""GUI responsiveness: the longest event-loop stall while the real models generate a reply, see a
photo and answer about it, transcribe a clip and train fusion, measured by the real-window tests in ``tests/test_ui_real.py``
(a 10 ms QTimer on the GUI thread; the tests write their worst gap to ``$MMCHAT_STALL_LOG``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, Result, Size

TESTS = ("test_real_model_answers_in_the_window_while_the_gui_stays_responsive",
         "test_gui_stays_responsive_while_a_photo_is_seen_and_answered",
         "test_gui_stays_responsive_while_a_clip_is_transcribed",
         "test_gui_stays_responsive_while_fusion_trains")
TARGET_MS = 50


def run(size: Size, *, engine=None) -> list[Result]:
    del engine  # the tests load their own models in their own process
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "stalls.jsonl"
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MMCHAT_STALL_LOG=str(log))
        repeats = 1 if size.quick else 3
        selected = TESTS[:1] if size.quick else TESTS
        for _ in range(repeats):
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ui_real.py",
                   "-k", " or ".join(selected)]
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"GUI stall tests failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    by_activity: dict[str, list[float]] = {}
    for row in rows:
        by_activity.setdefault(row["activity"], []).append(row["worst_ms"])
    for activity, worst in by_activity.items():
        results.append(Result(f"GUI longest stall while {activity}", max(worst), "ms", target=TARGET_MS,
                              detail={"worst_per_run_ms": worst}))
    return results
