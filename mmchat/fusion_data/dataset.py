"""Build a train or held-out fusion dataset directory: media files, ``samples.jsonl``, ``build.json``.

Sample ``i`` of a modality draws everything from ``numpy.random.default_rng([seed, split code,
modality code, i])``, so the two splits (codes 0 and 1) use different random streams even for the
same ``seed``, and each also keeps its own combinations and utterances (see
:mod:`~mmchat.fusion_data.images` and :mod:`~mmchat.fusion_data.grammar`). The same arguments
give byte-identical ``samples.jsonl``, images and (for speech, see
:mod:`~mmchat.fusion_data.speech`) audio. The directory is built under a temporary name and
renamed into place; calling again with the same arguments returns the finished directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmchat.errors import MMChatError
from mmchat.fusion_data import grammar, images
from mmchat.fusion_data.images import ImageConfig
from mmchat.fusion_data.records import QA, SAMPLES_FILE, Sample, write_samples
from mmchat.fusion_data.speech import SpeechConfig, Synthesizer, espeak_path, write_clip

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the same arguments would generate different data
SPLITS = {"train": 0, "heldout": 1}  # split -> code mixed into every seed
IMAGE_STREAM, AUDIO_STREAM = 0, 1
BUILD_FILE = "build.json"
IMAGE_DIR, AUDIO_DIR = "images", "audio"
TRANSCRIBE_PROMPT = "Write down what the speaker said."
ANSWER_PROMPT = "Answer the spoken request in one word."

Progress = Callable[[int, int], None]  # (done, total) samples


def build_dataset(out_dir: Path, *, split: str, n_images: int, n_speech: int, seed: int,
                  image_config: ImageConfig | None = None, speech_config: SpeechConfig | None = None,
                  progress: Progress | None = None) -> Path:
    """Write ``out_dir/<split>/`` (images/, audio/, samples.jsonl, build.json) and return it."""
    if split not in SPLITS:
        raise MMChatError(f"Unknown dataset split {split!r}.", hint=f"Use one of: {', '.join(SPLITS)}.")
    if n_images < 0 or n_speech < 0 or n_images + n_speech == 0:
        raise MMChatError("A dataset needs a positive number of images and/or speech clips.")
    image_config = image_config or ImageConfig()
    speech_config = speech_config or SpeechConfig()
    target = Path(out_dir) / split
    params = _params(split=split, n_images=n_images, n_speech=n_speech, seed=seed,
                     image_config=image_config, speech_config=speech_config)
    if _is_complete(target, params):
        log.info("%s is already built with these settings", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{split}.{os.getpid()}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / IMAGE_DIR).mkdir(parents=True)
    (tmp / AUDIO_DIR).mkdir()
    try:
        with tqdm(total=n_images + n_speech, desc=f"fusion data ({split})", unit="sample",
                  file=sys.stderr, leave=False, disable=None) as bar:
            def tick() -> None:
                bar.update(1)
                if progress:
                    progress(bar.n, n_images + n_speech)

            samples = _image_samples(tmp, split=split, n=n_images, seed=seed,
                                     config=image_config, tick=tick)
            samples += _speech_samples(tmp, split=split, n=n_speech, seed=seed,
                                       config=speech_config, tick=tick)
        write_samples(samples, tmp)
        params["espeak_ng"] = bool(espeak_path()) if n_speech else None
        (tmp / BUILD_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _params(*, split: str, n_images: int, n_speech: int, seed: int, image_config: ImageConfig,
            speech_config: SpeechConfig) -> dict:
    return {"generator": "mmchat.fusion_data", "format_version": FORMAT_VERSION, "split": split,
            "seed": seed, "n_images": n_images, "n_speech": n_speech,
            "image_config": dataclasses.asdict(image_config),
            "speech_config": dataclasses.asdict(speech_config)}


def _is_complete(target: Path, params: dict) -> bool:
    try:
        built = json.loads((target / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return False
    built.pop("espeak_ng", None)
    # Round-trip through JSON so tuples compare equal to the lists read back.
    return built == json.loads(json.dumps(params)) and (target / SAMPLES_FILE).is_file()


def _rng(seed: int, split: str, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], stream, index])


def _image_samples(directory: Path, *, split: str, n: int, seed: int, config: ImageConfig,
                   tick: Callable[[], None]) -> list[Sample]:
    samples = []
    start = time.perf_counter()
    for i in range(n):
        rng = _rng(seed, split, IMAGE_STREAM, i)
        scene = images.sample_scene(rng, split=split, config=config)
        sample_id = f"img-{i:06d}"
        path = directory / IMAGE_DIR / f"{sample_id}.png"
        images.render(scene).save(path, format="PNG")
        samples.append(Sample(id=sample_id, modality="image", path=path,
                              qa=tuple(images.questions(scene, rng, config=config)),
                              caption=images.caption(scene),
                              meta={"split": split, **images.scene_meta(scene)}))
        tick()
    if n:
        log.info("%d images in %.1f s (%.1f images/s)", n, time.perf_counter() - start,
                 n / max(time.perf_counter() - start, 1e-9))
    return samples


def _speech_samples(directory: Path, *, split: str, n: int, seed: int, config: SpeechConfig,
                    tick: Callable[[], None]) -> list[Sample]:
    if not n:
        return []
    start = time.perf_counter()
    synth = Synthesizer(seed=_session_seed(seed, split), config=config)
    pool = grammar.utterances(split)
    kinds = [k for k, _ in config.kind_weights]
    weights = np.array([w for _, w in config.kind_weights], dtype=float)
    samples = []
    for i in range(n):
        rng = _rng(seed, split, AUDIO_STREAM, i)
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        utterance = pool[kind][int(rng.integers(len(pool[kind])))]
        clip = synth.clip(utterance, rng)
        sample_id = f"aud-{i:06d}"
        path = directory / AUDIO_DIR / f"{sample_id}.flac"
        write_clip(path, clip.audio)
        prompt = TRANSCRIBE_PROMPT if kind == "transcript" else ANSWER_PROMPT
        samples.append(Sample(id=sample_id, modality="audio", path=path,
                              qa=(QA(q=prompt, a=utterance.answer, kind=kind),),
                              transcript=utterance.text,
                              meta={"split": split, **clip.meta}))
        tick()
    elapsed = time.perf_counter() - start
    log.info("%d speech clips in %.1f s (%.2f clips/s)", n, elapsed, n / max(elapsed, 1e-9))
    return samples


def _session_seed(seed: int, split: str) -> int:
    """onnxruntime's seed for the piper session of this split (a non-negative int64)."""
    return int(np.random.SeedSequence([seed, SPLITS[split], AUDIO_STREAM]).generate_state(1)[0])
