"""Media latency: what a picture or a voice clip costs.

* an image turn end to end (a 1024×768 photo: classifier, colours, OCR, fusion tokens where a
  checkpoint matches, and the longer prompt) against the same turn without the picture, as the
  extra time to the first token of the reply, fresh chats each time;
* OCR of a 1920×1080 screenshot of a terminal error;
* the evidence for the photo alone, and a 5 s clip through the Whisper encoder (+ projection).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import Result, Size, median_seconds

IMAGE_TURN_TARGET_S = 1.5  # extra seconds an image turn may take over the same turn without it
OCR_TARGET_S = 2.5  # a 1920×1080 screenshot
QUESTION = "What is in this picture?"
ERROR_NAME = "FileNotFoundError"  # the screenshot's error, which OCR must read


def sample_photo():
    """scikit-image's coffee photo scaled to 1024×768 (its own is 600×400)."""
    from PIL import Image

    from mmchat.vision.eval_sets import load_photo

    return load_photo("coffee").resize((1024, 768), Image.Resampling.BICUBIC)


def sample_screenshot():
    from mmchat.vision.eval_sets import ERRORS, _page

    name, message = next(e for e in ERRORS if e[0] == ERROR_NAME)
    lines = [("$ python report.py", False), ("Traceback (most recent call last):", False),
             ('  File "/home/ada/project/report.py", line 88, in <module>', False), ("    main()", False),
             ('  File "/home/ada/project/report.py", line 41, in main', False),
             ("    rows = load(path)", False), (f"{name}: {message}", True)]
    return _page(np.random.default_rng(0), lines, mono=True, size=(1920, 1080))


def _first_token_s(engine, media, text: str, images) -> float:
    from mmchat.chat import ChatSession
    from mmchat.llm import GenerationConfig

    session = ChatSession(engine, None, media=media, generation=GenerationConfig(max_new_tokens=1, temperature=0.0))
    started = time.perf_counter()
    for event in session.send(text, images=images):
        if event.kind == "token":
            return time.perf_counter() - started
    return time.perf_counter() - started


def run(size: Size, *, engine=None) -> list[Result]:
    from benchmarks.voice import speech_clip
    from mmchat.engine import Engine
    from mmchat.media import media_encoder

    engine = engine or Engine()
    media = media_encoder(engine)
    photo, screen, clip = sample_photo(), sample_screenshot(), speech_clip(seconds=5.0)
    results = []
    with_image, _ = median_seconds(lambda: _first_token_s(engine, media, QUESTION, [photo]),
                                             repeats=size.repeats)
    text_only, _ = median_seconds(lambda: _first_token_s(engine, media, QUESTION, []), repeats=size.repeats)
    results.append(Result("Image turn (1024×768 photo): extra time to first token", with_image - text_only, "s",
                          target=IMAGE_TURN_TARGET_S,
                          detail={"with_image_s": round(with_image, 3), "text_only_s": round(text_only, 3),
                                  "image_fusion": media.image_fusion}))
    reader = engine.text_reader
    seconds, _ = median_seconds(lambda: reader.read(screen), repeats=size.repeats)
    lines = reader.read(screen).lines
    results.append(Result("OCR of a 1920×1080 screenshot", seconds, "s", target=OCR_TARGET_S,
                          detail={"lines": len(lines), "error_name_read": any(ERROR_NAME in line for line in lines)}))
    seconds, _ = median_seconds(lambda: media.image(photo, index=1), repeats=size.repeats)
    part = media.image(photo, index=1)
    results.append(Result("Image evidence" + (" + fusion tokens" if media.image_fusion else "") + " (1024×768 photo)",
                          seconds * 1000, "ms", detail={"tokens": len(part.tensors[0]) if part.tensors else 0,
                                                        "evidence_chars": len(part.text)}))
    if media.audio_fusion:
        seconds, _ = median_seconds(lambda: media.audio(clip, transcript=""), repeats=size.repeats)
        rows = len(media.audio(clip, transcript="").tensors[0])
        results.append(Result("Audio (5 s) encode + projection", seconds * 1000, "ms", detail={"tokens": rows}))
    else:
        seconds, _ = median_seconds(lambda: engine.whisper.encode(clip), repeats=size.repeats)
        results.append(Result("Audio (5 s) encode (no fusion checkpoint)", seconds * 1000, "ms"))
    return results

