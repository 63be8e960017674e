"""Media latency: one image through CLIP + the fusion projector, one clip through the Whisper
encoder + the fusion projector (what a send costs before the LLM sees anything)."""

from __future__ import annotations

import torch

from benchmarks.common import Result, Size, median_seconds


def sample_image():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(image).ellipse((200, 120, 440, 360), fill="red")
    return image


def run(size: Size, *, engine=None) -> list[Result]:
    from benchmarks.voice import speech_clip
    from mmchat.engine import Engine
    from mmchat.media import media_encoder

    engine = engine or Engine()
    media = media_encoder(engine)
    image, clip = sample_image(), speech_clip(seconds=5.0)
    results = []
    if media.image_fusion:
        seconds, _ = median_seconds(lambda: media.image(image, index=1), repeats=size.repeats)
        rows = len(media.image(image, index=1).tensors[0])
        results.append(Result("Image encode + projection", seconds * 1000, "ms", detail={"tokens": rows}))
    else:
        seconds, _ = median_seconds(lambda: engine.image_encoder.encode([image]), repeats=size.repeats)
        results.append(Result("Image encode (no fusion checkpoint)", seconds * 1000, "ms"))
    if media.audio_fusion:
        seconds, _ = median_seconds(lambda: media.audio(clip, transcript=""), repeats=size.repeats)
        rows = len(media.audio(clip, transcript="").tensors[0])
        results.append(Result("Audio (5 s) encode + projection", seconds * 1000, "ms", detail={"tokens": rows}))
    else:
        seconds, _ = median_seconds(lambda: engine.whisper.encode(clip), repeats=size.repeats)
        results.append(Result("Audio (5 s) encode (no fusion checkpoint)", seconds * 1000, "ms"))
    return results

