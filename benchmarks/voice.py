"""Voice: our transcription of a ~5 s clip vs. stock openai-whisper ``transcribe()`` on the same
clip and the same weights (ours converted from the bundled CTranslate2 model, loaded into
openai-whisper's own ``Whisper`` module). openai-whisper is a benchmark-only dependency
(``scripts/bench.sh`` installs it without triton)."""

from __future__ import annotations

import json
import re
import statistics
import time

import numpy as np
import torch

from benchmarks.common import Result, Size

SENTENCE = "Please remind me to buy milk and eggs tomorrow morning, and call the dentist."


def speech_clip(text: str = SENTENCE, *, seconds: float = 5.0) -> np.ndarray:
    """``text`` spoken by the bundled piper voice (noise off), padded with silence to ``seconds``."""
    from mmchat.audio import SAMPLE_RATE, to_mono_16k
    from mmchat.tts import Speaker

    speaker = Speaker.load()
    audio = to_mono_16k(speaker.synthesize(text, noise_scale=0.0, noise_w=0.0), speaker.sample_rate)
    pad = max(0, int(seconds * SAMPLE_RATE) - len(audio))
    return np.concatenate([audio, np.zeros(pad, dtype=np.float32)]).astype(np.float32)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def stock_whisper(name: str = "whisper-base"):
    """openai-whisper's model with the same (converted) weights, or None if it is not installed."""
    try:
        import whisper
        from whisper.model import ModelDimensions, Whisper
    except ImportError:
        return None
    from safetensors.torch import load_file

    from mmchat.encoders import whisper_convert

    directory = whisper_convert.converted_dir(name)
    dims = ModelDimensions(**json.loads((directory / whisper_convert.DIMS_FILE).read_text()))
    model = Whisper(dims)
    model.load_state_dict({k: v.float() for k, v in load_file(str(directory / whisper_convert.WEIGHTS_FILE)).items()})
    model.eval()
    return whisper, model


def ours_vs_stock(size: Size, *, engine=None) -> list[Result]:
    from mmchat.engine import Engine

    ours_model = (engine or Engine()).whisper
    clip = speech_clip()
    stock = stock_whisper(ours_model.name)
    texts, times = {}, {"ours": [], "stock": []}

    def ours():
        texts["ours"] = ours_model.transcribe(clip, language="en").text

    def theirs():
        whisper, model = stock
        with torch.inference_mode():
            texts["stock"] = whisper.transcribe(model, clip, language="en", fp16=False,
                                                condition_on_previous_text=False)["text"]

    runs = [("ours", ours)] + ([("stock", theirs)] if stock else [])
    for _, fn in runs:
        fn()  # warm-up
    for _ in range(size.repeats):
        for name, fn in runs:
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    ours_s = statistics.median(times["ours"])
    detail = {"clip_s": round(len(clip) / 16_000, 2), "ours_s": round(ours_s, 3), "ours_text": texts["ours"]}
    results = [Result("Transcribe 5 s clip (ours)", ours_s, "s", detail=detail)]
    if stock:
        stock_s = statistics.median(times["stock"])
        detail.update(stock_s=round(stock_s, 3), stock_text=texts["stock"],
                      same_words=_words(texts["ours"]) == _words(texts["stock"]))
        results.append(Result("Transcribe speed-up vs openai-whisper", stock_s / ours_s, "×", target=3,
                              higher_is_better=True, detail=detail))
    return results


def run(size: Size, *, engine=None) -> list[Result]:
    return ours_vs_stock(size, engine=engine)
