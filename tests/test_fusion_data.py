"""Procedural fusion data: determinism, split disjointness, labels that match the pixels and audio.

Image checks measure the drawn pixels with the test's own colour hues, shape areas and position
rules (restated here from geometry, not imported), so a labelling bug cannot hide behind shared
constants. Speech uses the real bundled piper voice.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmchat.errors import MMChatError
from mmchat.fusion_data import (ImageConfig, SpeechConfig, build_dataset, dataset_hash,
                                load_samples, validate_dataset)
from mmchat.fusion_data import dataset, grammar, images, speech
from mmchat.fusion_data.__main__ import main as cli_main

# Reference hues (degrees) of the six colour names; a drawn shape must be within HUE_TOL of its own.
HUES = {"red": 0, "orange": 30, "yellow": 52, "green": 127, "blue": 225, "purple": 281}
HUE_TOL = 14
# Area of each outline divided by r² (r = meta "r"): circle πr², square side 1.6r, equilateral
# triangle with circumradius 1.25r, five-point star with radii 1.25r / 0.45r.
AREA_PER_R2 = {"circle": math.pi, "square": 1.6**2, "triangle": 3 * math.sqrt(3) / 4 * 1.25**2,
               "star": 5 * 1.25 * 0.45 * math.sin(math.pi / 5)}
BACKGROUND_ORDER = ("white", "grey", "stripes", "checker", "noise")
COLOUR_ORDER = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_ORDER = ("circle", "square", "triangle", "star")


def documented_novel(colour: str, shape: str, background: str) -> bool:
    """The held-out rule as the images module docstring states it."""
    i = (COLOUR_ORDER.index(colour) + 2 * SHAPE_ORDER.index(shape)) % 5
    return background == BACKGROUND_ORDER[i]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    train = build_dataset(root, split="train", n_images=80, n_speech=5, seed=11)
    heldout = build_dataset(root, split="heldout", n_images=60, n_speech=4, seed=11)
    return {"train": train, "heldout": heldout}


# --- pixels -----------------------------------------------------------------------------------

def _hsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    hsv = np.asarray(Image.open(path).convert("RGB").convert("HSV"), dtype=np.float64) / 255
    return rgb, hsv


def _saturated(hsv: np.ndarray) -> np.ndarray:
    strong = hsv[..., 1] > 0.5
    level = np.median(hsv[..., 1][strong]) if strong.any() else 1.0
    return hsv[..., 1] > 0.5 * level


def _hue_deg(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*rgb)[0] * 360


def _nearest_colour(hue: float) -> tuple[str, float]:
    dist = {n: min(abs(hue - h), 360 - abs(hue - h)) for n, h in HUES.items()}
    name = min(dist, key=dist.get)
    return name, dist[name]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask (label propagation, no scipy)."""
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape) + 1, 0)
    big = mask.size + 1
    while True:
        padded = np.pad(np.where(mask, labels, big), 1, constant_values=big)
        neighbours = np.minimum.reduce([padded[1 + dy:padded.shape[0] - 1 + dy,
                                               1 + dx:padded.shape[1] - 1 + dx]
                                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        new = np.where(mask, neighbours, 0)
        if np.array_equal(new, labels):
            break
        labels = new
    return [labels == v for v in np.unique(labels[mask])]


def _region(cx: float, cy: float) -> str:
    dx, dy = cx - 112, cy - 112
    if max(abs(dx), abs(dy)) < 25:
        return "centre"
    if abs(dx) > abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _answers(sample, kind: str) -> list[str]:
    return [qa.a for qa in sample.qa if qa.kind == kind]


def test_single_shape_pixels_match_labels(built):
    singles = [s for d in built.values() for s in load_samples(d)
               if s.modality == "image" and s.meta["count"] == 1]
    assert len(singles) >= 50
    seen_shapes = set()
    for s in singles:
        drawn = s.meta["shapes"][0]
        rgb, hsv = _hsv(s.path)
        mask = _saturated(hsv)
        # colour: hue of the mean saturated pixel is the labelled colour's hue
        name, dist = _nearest_colour(_hue_deg(rgb[mask].mean(axis=0)))
        assert (name, _answers(s, "colour")) == (drawn["colour"], [drawn["colour"]]), s.id
        assert dist < HUE_TOL, (s.id, dist)
        # shape: pixel area / r² is the labelled outline's, and no other shape's
        ratio = mask.sum() / drawn["r"] ** 2
        nearest = min(AREA_PER_R2, key=lambda k: abs(math.log(ratio / AREA_PER_R2[k])))
        assert nearest == drawn["shape"] == _answers(s, "shape")[0], (s.id, ratio)
        assert ratio == pytest.approx(AREA_PER_R2[drawn["shape"]], rel=0.07), s.id
        seen_shapes.add(nearest)
        # position: the centroid is where the label says
        ys, xs = np.nonzero(mask)
        assert (xs.mean(), ys.mean()) == pytest.approx((drawn["cx"], drawn["cy"]), abs=1.5), s.id
        assert _region(xs.mean(), ys.mean()) == drawn["position"] == _answers(s, "position")[0]
        assert drawn["colour"] in s.caption and drawn["shape"] in s.caption
    assert {"circle", "square", "triangle"} <= seen_shapes


def test_multi_shape_count_and_colours_match_pixels(built):
    multis = [s for d in built.values() for s in load_samples(d)
              if s.modality == "image" and s.meta["count"] > 1]
    assert len(multis) >= 15
    number = {"two": 2, "three": 3, "four": 4}
    for s in multis:
        rgb, hsv = _hsv(s.path)
        parts = _components(_saturated(hsv))
        assert len(parts) == s.meta["count"] == number[_answers(s, "count")[0]], s.id
        by_position = {}
        for part in parts:
            ys, xs = np.nonzero(part)
            colour, _ = _nearest_colour(_hue_deg(rgb[part].mean(axis=0)))
            by_position[_region(xs.mean(), ys.mean())] = colour
        for drawn in s.meta["shapes"]:
            assert by_position[drawn["position"]] == drawn["colour"], s.id
        for qa in s.qa:
            if qa.kind == "colour":  # "What colour is the <shape>?"
                target = qa.q.removeprefix("What colour is the ").rstrip("?")
                (match,) = [d for d in s.meta["shapes"] if d["shape"] == target]
                assert qa.a == by_position[match["position"]]


def test_word_images_have_dark_text_and_no_colour(built):
    words = [s for d in built.values() for s in load_samples(d)
             if s.modality == "image" and s.meta["word"]]
    assert words, "no word images were drawn"
    for s in words:
        rgb, hsv = _hsv(s.path)
        assert _answers(s, "word") == [s.meta["word"]] and s.meta["word"] in images.WORDS
        assert (rgb.max(axis=2) < 0.35).sum() > 150, s.id  # dark glyph pixels
        assert not _saturated(hsv).any() or hsv[..., 1].max() < 0.2


def test_colour_and_shape_questions_mostly_from_single_shapes():
    config = ImageConfig()
    from_single = total = 0
    for i in range(400):
        rng = np.random.default_rng([5, i])
        scene = images.sample_scene(rng, split="train", config=config)
        for qa in images.questions(scene, rng, config=config):
            if qa.kind in ("colour", "shape"):
                total += 1
                from_single += len(scene.shapes) == 1
    assert from_single / total > 0.6


def test_captions_put_each_shape_where_a_fixed_token_budget_keeps_it():
    """Colour and shape come straight after the article, and a group's shapes straight after
    "N shapes:", so a 32-token spelling keeps all four shapes of the largest group (the background
    goes last, where it may be cut)."""
    config = ImageConfig()
    seen = set()
    for i in range(300):
        scene = images.sample_scene(np.random.default_rng([6, i]), split="train", config=config)
        if scene.word:
            continue
        text = images.caption(scene)
        words = text.replace(",", "").split()
        ordered = sorted(scene.shapes, key=lambda s: images.POSITIONS.index(s.position))
        if len(scene.shapes) == 1:
            s = ordered[0]
            assert words[1:3] == [s.colour, s.shape], text
        else:
            assert words[:2] == [images.NUMBER_WORDS[len(scene.shapes)], "shapes:"], text
            listed = text.split(": ", 1)[1].rsplit(", on ", 1)[0]
            pairs = [p.split()[1:3] for p in listed.replace(" and ", ", ").split(", ")]
            assert pairs == [[s.colour, s.shape] for s in ordered], text
            assert text.endswith(f"on {images.BACKGROUND_PHRASES[scene.background]} background"), text
            if len(scene.shapes) == 4:
                assert len(text.split(", on ")[0].replace(",", " ,").split()) <= 31, text
        seen.add(len(scene.shapes))
    assert seen == {1, 2, 3, 4}


# --- splits -----------------------------------------------------------------------------------

def _scenes(split: str, n: int) -> list[images.Scene]:
    config = ImageConfig()
    return [images.sample_scene(np.random.default_rng([9, i]), split=split, config=config)
            for i in range(n)]


def test_train_images_never_show_heldout_combinations():
    train = _scenes("train", 1500)
    triples = {(s.colour, s.shape, sc.background) for sc in train for s in sc.shapes}
    assert not any(documented_novel(*t) for t in triples)
    assert not any(sc.novel_combo for sc in train)
    # …while every core colour × shape pair appears (on four backgrounds), and no star by default.
    expected = {(c, s, b) for c in COLOUR_ORDER for s in images.CORE_SHAPES for b in BACKGROUND_ORDER
                if not documented_novel(c, s, b)}
    assert triples == expected


def test_heldout_images_mix_novel_and_seen_combinations():
    heldout = [sc for sc in _scenes("heldout", 600) if sc.shapes]
    novel = [sc for sc in heldout if sc.novel_combo]
    assert 0.4 < len(novel) / len(heldout) < 0.6
    for sc in heldout:
        has_novel = any(documented_novel(s.colour, s.shape, sc.background) for s in sc.shapes)
        assert has_novel == sc.novel_combo
    single_novel = {(sc.shapes[0].colour, sc.shapes[0].shape, sc.background) for sc in novel
                    if len(sc.shapes) == 1}
    assert len(single_novel) >= 10  # many different held-out triples are really asked about


def test_stars_when_enabled_have_the_star_area():
    config = ImageConfig(extra_shape_fraction=1.0, word_fraction=0.0, single_fraction=1.0)
    for i in range(6):
        scene = images.sample_scene(np.random.default_rng([3, i]), split="train", config=config)
        (drawn,) = scene.shapes
        assert drawn.shape == "star"
        hsv = np.asarray(images.render(scene).convert("HSV"), dtype=np.float64) / 255
        ratio = _saturated(hsv).sum() / drawn.r**2
        assert ratio == pytest.approx(AREA_PER_R2["star"], rel=0.08)
        assert min(AREA_PER_R2, key=lambda k: abs(math.log(ratio / AREA_PER_R2[k]))) == "star"


def test_grammar_splits_are_disjoint_and_large():
    train = [u for us in grammar.utterances("train").values() for u in us]
    heldout = [u for us in grammar.utterances("heldout").values() for u in us]
    assert len({u.text for u in train}) > 2000
    assert len({u.text for u in train if u.kind != "transcript"}) > 500
    assert not {u.text for u in train} & {u.text for u in heldout}
    for kind in grammar.KINDS:
        assert grammar.utterances("heldout")[kind], kind
    heldout_templates = {"repeat/could-you", "colour_fact/which", "arithmetic/how-much",
                         "sequence/follows", "opposite/means-opposite", "transcript/my-relative"}
    assert not heldout_templates & {u.template for u in train}
    assert heldout_templates <= {u.template for u in heldout}
    for word in ("blanket", "tunnel", "frog", "eggplant", "north", "thin", "owl", "madrid",
                 "cousin", "octopus"):
        assert word in grammar.HELDOUT_VOCAB
    train_words = set().union(*(grammar.words_of(u.text) | grammar.words_of(u.answer) for u in train))
    assert not train_words & grammar.HELDOUT_VOCAB


def test_grammar_answers_are_right():
    value = {w: i for i, w in enumerate(grammar.NUMBERS)}
    for u in grammar.all_utterances():
        words = [w.strip(".?").lower() for w in u.text.split()]
        if u.kind == "arithmetic":
            a, b = (value[w] for w in words if w in value)
            op = next(w for w in words if w in ("plus", "minus", "times", "and"))
            expected = {"plus": a + b, "and": a + b, "minus": a - b, "times": a * b}[op]
            assert value[u.answer] == expected, u.text
            assert ((3 * a + b) % 7 == 2 or u.template == "arithmetic/how-much") == u.heldout
        elif u.kind == "sequence" and words[1] == "number":
            n = value[words[-1]]
            assert value[u.answer] == n + (-1 if "before" in words else 1), u.text
        elif u.kind == "repeat":
            assert u.answer in words
        elif u.kind == "transcript":
            assert u.answer == u.text
        else:
            assert len(u.answer.split()) == 1, u.text
    assert ("What is two plus three?", "five") in {(u.text, u.answer) for u in grammar.all_utterances()}


def test_built_speech_respects_splits(built):
    for split, directory in built.items():
        allowed = {(u.text, u.answer) for us in grammar.utterances(split).values() for u in us}
        clips = [s for s in load_samples(directory) if s.modality == "audio"]
        assert clips
        for s in clips:
            assert (s.transcript, s.qa[0].a) in allowed
            assert s.meta["split"] == split


# --- audio ------------------------------------------------------------------------------------

def test_speech_clips_are_16k_speech_of_plausible_length(built):
    clips = [s for d in built.values() for s in load_samples(d) if s.modality == "audio"]
    for s in clips:
        info = sf.info(str(s.path))
        assert (info.samplerate, info.channels) == (16_000, 1)
        audio = speech.read_clip(s.path)
        duration = audio.size / 16_000
        n_words = len(s.transcript.split())
        assert duration == pytest.approx(s.meta["duration_s"], abs=1e-3)
        assert 0.15 + 0.12 * n_words < duration < 1.2 + 0.9 * n_words, (s.id, duration)
        peak_db = 20 * np.log10(np.abs(audio).max())
        assert peak_db == pytest.approx(s.meta["peak_dbfs"], abs=0.3)
        lead = int(s.meta["pad_s"][0] * 16_000)
        body = audio[lead:audio.size - int(s.meta["pad_s"][1] * 16_000)]
        rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
        assert rms(body) > 0.01
        if lead >= 800:  # ≥ 50 ms of padding: only the added noise (or silence) is there
            assert rms(body) > 2.5 * rms(audio[:lead]), s.id


@pytest.mark.parametrize("noise", speech.NOISE_TYPES)
def test_augment_hits_the_requested_snr(noise, monkeypatch):
    monkeypatch.setattr(speech, "NOISE_TYPES", (noise,))
    config = SpeechConfig(snr_db=(15.0,), snr_weights=(1.0,))
    t = np.arange(16_000) / 16_000
    voice = (0.5 * np.sin(2 * np.pi * 220 * t) * np.hanning(t.size)).astype(np.float32)
    out, meta = speech.augment(voice, np.random.default_rng(3), config=config)
    assert meta["snr_db"] == 15.0 and meta["noise"] == noise
    lead = round(meta["pad_s"][0] * 16_000)
    padded = np.zeros(out.size)
    padded[lead:lead + voice.size] = voice
    gain = np.dot(out, padded) / np.dot(padded, padded)
    residual = out / gain - padded
    snr = 10 * np.log10(np.mean(voice.astype(np.float64) ** 2) / np.mean(residual**2))
    assert snr == pytest.approx(15.0, abs=1.0)


def test_espeak_voice_when_installed():
    if speech.espeak_path() is None:
        pytest.skip("espeak-ng is not installed; the piper voice covers every clip")
    synth = speech.Synthesizer(seed=1, config=SpeechConfig(espeak_fraction=1.0))
    u = grammar.utterances("train")["repeat"][0]
    clip = synth.clip(u, np.random.default_rng(0))
    assert clip.meta["voice"].startswith("espeak-ng:en")
    assert 0.5 < clip.audio.size / 16_000 < 5


def test_missing_espeak_falls_back_to_piper(monkeypatch, caplog):
    monkeypatch.setattr(speech, "espeak_path", lambda: None)
    synth = speech.Synthesizer(seed=1, config=SpeechConfig(espeak_fraction=1.0))
    assert "espeak-ng is not installed" in caplog.text
    clip = synth.clip(grammar.utterances("train")["fact"][0], np.random.default_rng(0))
    assert clip.meta["voice"] == "piper:piper-joe-medium"


@pytest.mark.slow
def test_whisper_hears_the_transcript(tmp_path):
    """The real Whisper model recognises a clean generated clip as its transcript."""
    from mmchat.encoders.whisper import Whisper

    config = SpeechConfig(snr_db=(None,), snr_weights=(1.0,), espeak_fraction=0.0,
                          length_scale=(1.0, 1.0))
    synth = speech.Synthesizer(seed=2, config=config)
    utterance = next(u for u in grammar.all_utterances() if u.text == "The small cat sat on the mat.")
    clip = synth.clip(utterance, np.random.default_rng(0))
    heard = grammar.words_of(Whisper.load().transcribe(clip.audio).text)
    assert {"small", "cat", "sat", "mat"} <= heard


# --- determinism, format, hash ----------------------------------------------------------------

def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    a = build_dataset(tmp_path / "a", split="train", n_images=25, n_speech=3, seed=4)
    b = build_dataset(tmp_path / "b", split="train", n_images=25, n_speech=3, seed=4)
    assert _files(a) == _files(b)
    assert dataset_hash(a) == dataset_hash(b)
    c = build_dataset(tmp_path / "c", split="train", n_images=25, n_speech=0, seed=5)
    assert (c / "samples.jsonl").read_bytes() != (a / "samples.jsonl").read_bytes()
    held = build_dataset(tmp_path / "a", split="heldout", n_images=25, n_speech=0, seed=4)
    assert (held / "images" / "img-000000.png").read_bytes() != (a / "images" / "img-000000.png").read_bytes()


def test_interrupted_build_resumes_to_identical_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "IMAGE_CHUNK", 4)
    monkeypatch.setattr(dataset, "AUDIO_CHUNK", 2)
    whole = build_dataset(tmp_path / "whole", split="train", n_images=10, n_speech=4, seed=8)

    def stop_after(limit):
        def progress(done, total):
            assert total == 14
            if done >= limit:
                raise KeyboardInterrupt
        return progress

    for limit in (4, 12):  # stop after the first image chunk, then after the first audio chunk
        with pytest.raises(KeyboardInterrupt):
            build_dataset(tmp_path / "resumed", split="train", n_images=10, n_speech=4, seed=8,
                          progress=stop_after(limit))
        assert (tmp_path / "resumed" / ".train.partial" / "chunks").is_dir()
    done = []
    resumed = build_dataset(tmp_path / "resumed", split="train", n_images=10, n_speech=4, seed=8,
                            progress=lambda d, t: done.append(d))
    assert done[0] == 4  # the finished image chunk was skipped, not redone
    assert _files(resumed) == _files(whole)
    assert not (tmp_path / "resumed" / ".train.partial").exists()


def test_rebuild_is_skipped_only_for_the_same_settings(tmp_path):
    path = build_dataset(tmp_path, split="train", n_images=6, n_speech=0, seed=1)
    stamp = (path / "samples.jsonl").stat().st_mtime_ns
    assert build_dataset(tmp_path, split="train", n_images=6, n_speech=0, seed=1) == path
    assert (path / "samples.jsonl").stat().st_mtime_ns == stamp
    build_dataset(tmp_path, split="train", n_images=7, n_speech=0, seed=1)
    assert len(load_samples(path)) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["train"]  # no partial build left behind


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(MMChatError, match="split"):
        build_dataset(tmp_path, split="test", n_images=1, n_speech=0, seed=0)
    with pytest.raises(MMChatError):
        build_dataset(tmp_path, split="train", n_images=0, n_speech=0, seed=0)


def test_dataset_hash_tracks_content_not_location(built, tmp_path):
    original = dataset_hash(built["train"])
    copy = shutil.copytree(built["train"], tmp_path / "copy")
    assert dataset_hash(copy) == original
    image = copy / "images" / "img-000003.png"
    image.write_bytes(image.read_bytes() + b"\0")
    assert dataset_hash(copy) != original
    shutil.copy(built["train"] / "images" / "img-000003.png", image)
    lines = (copy / "samples.jsonl").read_text().splitlines(keepends=True)
    (copy / "samples.jsonl").write_text("".join(lines[1:]))
    assert dataset_hash(copy) != original


def test_built_dataset_validates(built):
    samples = validate_dataset(built["train"])
    assert {s.modality for s in samples} == {"image", "audio"}
    assert all(s.path.is_absolute() and s.path.is_file() for s in samples)
    assert json.loads((built["train"] / "build.json").read_text())["seed"] == 11


def _write_dataset(directory: Path, lines: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(directory / "ok.png")
    np.save(directory / "ok.npy", np.zeros(1600, dtype=np.float32) + 0.1)
    (directory / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return directory


GOOD_IMAGE = '{"id": "a", "modality": "image", "path": "ok.png", "qa": [{"q": "Colour?", "a": "red", "kind": "colour"}]}'
GOOD_AUDIO = '{"id": "b", "modality": "audio", "path": "ok.npy", "transcript": "hello there"}'


def test_hand_made_dataset_with_npy_and_absolute_paths_validates(tmp_path):
    absolute = json.dumps({"id": "c", "modality": "image", "path": str(tmp_path / "d" / "ok.png"),
                           "caption": "a red square"})
    samples = validate_dataset(_write_dataset(tmp_path / "d", [GOOD_IMAGE, "", GOOD_AUDIO, absolute]))
    assert [s.id for s in samples] == ["a", "b", "c"]
    assert samples[1].text == "hello there" and samples[2].caption == "a red square"


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "line 2: not valid JSON"),
    ('{"id": "x", "modality": "video", "path": "ok.png", "caption": "c"}', "line 2: modality"),
    ('{"id": "x", "modality": "image", "path": "ok.png", "qa": [{"q": "?", "a": "red"}]}',
     "line 2: qa item 1"),
    ('{"id": "a", "modality": "image", "path": "ok.png", "caption": "c"}', "already used on line 1"),
    ('{"id": "x", "modality": "image", "path": "ok.png", "label": "red", "caption": "c"}',
     "line 2: unknown key"),
    ('{"id": "x", "modality": "image", "path": "ok.png"}', "line 2: the sample has neither"),
    ('{"id": "x", "modality": "image", "path": "ok.png", "transcript": "t"}', "line 2: an image"),
    ('[1, 2]', "line 2: expected a JSON object"),
    ('{"id": "x", "modality": "image", "path": "missing.png", "caption": "c"}',
     "line 2 \\(x\\): missing file"),
    ('{"id": "x", "modality": "audio", "path": "ok.png", "transcript": "t"}', "line 2 \\(x\\).*must be one of"),
])
def test_validator_names_the_bad_line(tmp_path, bad_line, message):
    directory = _write_dataset(tmp_path / "d", [GOOD_IMAGE, bad_line, GOOD_AUDIO])
    with pytest.raises(MMChatError, match=message):
        validate_dataset(directory)


def test_validator_catches_unreadable_media_and_empty_files(tmp_path):
    directory = _write_dataset(tmp_path / "d", [GOOD_IMAGE, GOOD_AUDIO])
    (directory / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    np.save(directory / "ok.npy", np.zeros((2, 3)))
    with pytest.raises(MMChatError) as err:
        validate_dataset(directory)
    assert "line 1 (a): ok.png is unreadable" in str(err.value)
    assert "line 2 (b): ok.npy: a .npy clip must be" in str(err.value)
    (directory / "samples.jsonl").write_text("\n\n")
    with pytest.raises(MMChatError, match="holds no samples"):
        load_samples(directory)
    with pytest.raises(MMChatError, match="No samples.jsonl"):
        load_samples(tmp_path / "nowhere")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["id", "modality", "path", "qa", "caption",
                                                              "transcript", "meta", "q", "a", "kind"]),
                                             inner, max_size=6), max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_any_json_line_loads_or_raises_mmchat_error(tmp_path, value):
    (tmp_path / "samples.jsonl").write_text(json.dumps(value) + "\n")
    try:
        samples = load_samples(tmp_path)
    except MMChatError as exc:
        assert "line 1" in str(exc)
    else:
        assert len(samples) == 1 and samples[0].modality in ("image", "audio")


def test_cli_writes_both_splits(tmp_path, capsys):
    assert cli_main(["--out", str(tmp_path), "--images", "10", "--speech", "0", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "train: 10 samples" in out and "heldout: 2 samples" in out
    assert dataset_hash(tmp_path / "train") in out
    assert cli_main(["--out", str(tmp_path), "--images", "0", "--speech", "0", "--split", "train"]) == 1
    assert cli_main(["--check", str(tmp_path / "heldout")]) == 0
    assert "2 samples (2 images, 0 audio), all media readable" in capsys.readouterr().out
    next((tmp_path / "heldout" / "images").iterdir()).unlink()
    assert cli_main(["--check", str(tmp_path / "heldout")]) == 1
    assert "missing file" in capsys.readouterr().err
