"""Start-up and memory: cold start to the window painted, cold start to the first reply (a new
process answering one message), and peak RSS with every default model loaded and used."""

from __future__ import annotations

import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Result, Size

WINDOW_TARGET_S = 1.5
RSS_TARGET_MB = 1200  # issue 25: all default models loaded and used, with chat on llama.cpp
RSS_SCRIPT = r"""
import sys
import numpy as np
from PIL import Image
from mmchat.engine import Engine
from mmchat.encoders.text import TextEmbedder
from mmchat.llm import GenerationConfig
from mmchat.media import media_encoder
from benchmarks.common import peak_rss_mb
engine = Engine()
engine.load_all()
TextEmbedder.load().embed(["hello"])
media = media_encoder(engine)
part = media.image(Image.new("RGB", (320, 240), "red"), index=1)
clip = np.load(sys.argv[1])
engine.whisper.transcribe(clip)
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": part.text + "\nWhat colour is it?"}]
engine.llm.generate(msgs, media=list(part.tensors), config=GenerationConfig(max_new_tokens=16, temperature=0))
print(f"PEAK_RSS_MB {peak_rss_mb():.1f}")
"""


def _env(data_dir: str) -> dict:
    return dict(os.environ, QT_QPA_PLATFORM="offscreen", MMCHAT_DATA_DIR=data_dir)


def window_painted_s(data_dir: str) -> float:
    """Launch ``mmchat -v app``; the time its log gives for the first paint; then kill it."""
    process = subprocess.Popen([sys.executable, "-m", "mmchat.cli", "-v", "app"], stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=_env(data_dir), start_new_session=True)
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1):
                match = re.search(rb"first window painted ([0-9.]+) s after launch", process.stderr.readline())
                if match:
                    return float(match.group(1))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    raise RuntimeError("the app never reported its first paint")


def first_reply_s(data_dir: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmchat.cli", "chat", "--temporary", "--once", "Say hello.",
                    "--max-tokens", "8", "--temperature", "0"], env=_env(data_dir), check=True,
                   capture_output=True, timeout=600)
    return time.perf_counter() - started


def peak_rss() -> float:
    """Peak RSS of a process that loads and uses what the app loads at start (LLM, Whisper, CLIP,
    the memory embedder). The speech clip is synthesized here, in the parent: the read-aloud voice
    that makes it is loaded by the app only when a reply is read aloud."""
    from benchmarks.voice import speech_clip

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.npy"
        np.save(clip, speech_clip(seconds=5.0))
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(clip)], cwd=ROOT, capture_output=True,
                             text=True, timeout=1200, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    match = re.search(r"PEAK_RSS_MB ([0-9.]+)", out.stdout)
    if not match:
        raise RuntimeError(f"the RSS probe failed:\n{out.stderr[-3000:]}")
    return float(match.group(1))


def run(size: Size, *, engine=None) -> list[Result]:
    del engine  # everything here runs in fresh processes
    with tempfile.TemporaryDirectory() as data_dir:
        window = [window_painted_s(data_dir) for _ in range(size.repeats)]
        reply = [first_reply_s(data_dir) for _ in range(1 if size.quick else 3)]
    results = [Result("Cold start to window painted", statistics.median(window), "s", target=WINDOW_TARGET_S,
                      detail={"runs_s": window}),
               Result("Cold start to first reply (CLI, 8 tokens)", statistics.median(reply), "s",
                      detail={"runs_s": reply})]
    if not size.quick:
        results.append(Result("Peak RSS, all default models loaded and used", peak_rss(), "MB",
                              target=RSS_TARGET_MB))
    return results
