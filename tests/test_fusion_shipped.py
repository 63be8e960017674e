"""The fusion checkpoints shipped in assets/fusion/ against their controls, on held-out data drawn and
spoken here (a seed the checkpoints never saw), with the real Qwen and Whisper: the one for the default
image encoder (EfficientNet-Lite0, pretrained) and the one for CLIP's seeded random init."""

import math
import subprocess
import sys

import pytest
import torch

from mmchat import fusion, paths
from mmchat.fusion_data import ImageConfig, build_dataset, dataset_hash, validate_dataset
from mmchat.fusion_data.photos import VISION_IMAGE_CONFIG
from mmchat.fusion_eval import accuracy, losses
from mmchat.fusion_train import build_examples, encode_features
from mmchat.media import find_checkpoint

pytestmark = pytest.mark.slow
SEED = 7  # the shipped checkpoint was trained on seed 1 and evaluated on seeds 0 and 1
LOSS_IMAGES = 16
LOSS_CLIPS = 30


# Each shipped checkpoint's image encoder and the generator its projector was trained on.
ENCODERS = {"efficientnet-lite0": VISION_IMAGE_CONFIG, "clip-vit-b-32": ImageConfig()}
# EfficientNet's checkpoint (w_image 0.34), measured: on these 30 questions each colour 83 %, shape
# 83 %; on 44 and 45, 79.5 % and 82 % (at the earlier w_image 0.76: 77 % and 80 %). Its tokens are
# not the drawings' only evidence: end to end, eval-vision's unseen drawings are 96 % right.
BARS = {"clip-vit-b-32": {"colour": 0.8, "shape": 0.75},
        "efficientnet-lite0": {"colour": 0.8, "shape": 0.8}}


@pytest.fixture(scope="module", params=list(ENCODERS))
def image_engine(engine, request):
    """The session's engine with this image encoder (the LLM and Whisper shared, not loaded twice)."""
    return engine.with_models(image=request.param)


@pytest.fixture(scope="module")
def shipped(image_engine):
    llm, name = image_engine.training_llm, image_engine.model_name("image")
    directory = paths.assets_dir() / "fusion" / llm.name / name
    assert find_checkpoint(llm.name, name) == directory, "the shipped checkpoint is what chat uses"
    return fusion.load(directory, llm=llm.name, hidden_size=llm.hidden_size,
                       image_fingerprint=image_engine.image_encoder.fingerprint,
                       audio_fingerprint=image_engine.whisper.fingerprint, embed=llm.embed)


@pytest.fixture(scope="module")
def heldout(image_engine, tmp_path_factory):
    config = ENCODERS[image_engine.model_name("image")]
    directory = build_dataset(tmp_path_factory.mktemp("heldout"), split="heldout", n_images=48, n_speech=0,
                              seed=SEED, image_config=config)
    samples = validate_dataset(directory)
    features = encode_features(samples, image_encoder=image_engine.image_encoder, whisper=image_engine.whisper,
                               data_hash=dataset_hash(directory))
    return samples, features


def test_real_image_features_beat_shuffled_and_none(engine, shipped, heldout):
    samples, features = heldout
    # Every question of 16 drawings (3 forward passes each): all 48 took 4 minutes per checkpoint.
    examples = build_examples(samples[:LOSS_IMAGES])
    loss = losses(engine.training_llm, shipped, features, examples, system_prompt="You are mmchat.")["image"]
    assert loss["real"] < loss["shuffled"] - 0.05 and loss["real"] < loss["none"], loss


def test_colour_and_shape_answers_beat_no_image_and_chance(engine, image_engine, shipped, heldout):
    samples, features = heldout
    examples = [e for e in build_examples(samples) if e.kind in ("colour", "shape")]
    result = accuracy(engine.training_llm, shipped, features, examples, system_prompt="You are mmchat.",
                      limit_per_kind=30)["image"]
    # CLIP's seeded random init, on these 30 questions each: colour 90 %, shape 83 % (the session-11
    # checkpoint: 70 % and 77 %); on 50 other seed-7 questions each, 90 % and 86 %. The issue aimed at 80 %.
    # EfficientNet: see BARS.
    bar = BARS[image_engine.model_name("image")]
    for kind, got in result.items():
        assert got["accuracy"] >= bar[kind] and got["accuracy"] > got["no_media_accuracy"] + 0.25, (kind, got)


def test_both_checkpoints_carry_the_same_audio_branch_bit_for_bit():
    from safetensors.torch import load_file

    root = paths.assets_dir() / "fusion" / "qwen2.5-coder-0.5b-instruct"
    clip, efficientnet = (load_file(root / name / fusion.WEIGHTS_FILE) for name in ENCODERS)
    audio = [k for k in clip if k.startswith("audio")]
    assert audio and all(torch.equal(clip[k], efficientnet[k]) for k in audio)
    assert not torch.equal(clip["alpha"], efficientnet["alpha"])  # the weights wᵢ were trained, not left at 0.5/0.5


def test_cli_chat_once_answers_colour_and_shape_of_drawings_it_never_saw(tmp_path):
    """The acceptance's own command, with the default encoder, on drawings from eval-vision's generator."""
    import numpy as np

    from mmchat.vision.eval_sets import drawing

    correct = []
    for i in range(2):
        image, colour, shape = drawing(np.random.default_rng([SEED, i]))
        path = tmp_path / f"drawing{i}.png"
        image.save(path)
        for question, wanted in (("What colour is the shape?", colour), ("What shape is it?", shape)):
            result = subprocess.run(
                [sys.executable, "-m", "mmchat.cli", "chat", "--temporary", "--once", question,
                 "--image", str(path), "--temperature", "0", "--max-tokens", "24"],
                capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stderr[-2000:]
            correct.append(wanted in result.stdout.lower())
    assert sum(correct) >= 3, correct


def test_spoken_requests_are_answered_through_audio_tokens_alone(engine, tmp_path_factory):
    """The transcript withheld: the audio group is all the LLM gets of the request (the audio branch
    both checkpoints share), and its answer loss beats shuffled clips and none."""
    llm = engine.training_llm
    directory = find_checkpoint(llm.name, engine.model_name("image"))
    shipped = fusion.load(directory, llm=llm.name, hidden_size=llm.hidden_size,
                          audio_fingerprint=engine.whisper.fingerprint, embed=llm.embed)
    data = build_dataset(tmp_path_factory.mktemp("spoken"), split="heldout", n_images=0, n_speech=60, seed=SEED)
    samples = validate_dataset(data)
    features = encode_features(samples, whisper=engine.whisper, data_hash=dataset_hash(data))
    loss = losses(llm, shipped, features, build_examples(samples[:LOSS_CLIPS]), system_prompt="You are mmchat.")["audio"]
    assert loss["real"] < loss["shuffled"] - 0.05 and loss["real"] < loss["none"], loss
    examples = [e for e in build_examples(samples) if e.modality == "audio" and e.kind != "transcript"]
    result = accuracy(llm, shipped, features, examples, system_prompt="You are mmchat.", limit_per_kind=10)["audio"]
    n = sum(got["n"] for got in result.values())
    hits = sum(round(got["accuracy"] * got["n"]) for got in result.values())
    control = sum(round(got["no_media_accuracy"] * got["n"]) for got in result.values())
    assert hits >= control + 4 and hits >= 0.1 * n, (hits, control, n, result)


def test_train_fusion_end_to_end_with_the_shipped_recipe(engine, tmp_path):
    """`train-fusion`'s whole job on a tiny generated dataset, with the defaults (the shipped recipe,
    shortened): progress counts alignment and answer-loss steps together, and the checkpoint it
    writes loads with its CTC audio vocabulary and makes audio tokens."""
    from mmchat.audio import load_audio
    from mmchat.chat import SYSTEM_PROMPT
    from mmchat.fusion_train import HEARD_KEY, TrainConfig, train_fusion

    data = build_dataset(tmp_path / "data", split="train", n_images=6, n_speech=4, seed=3)
    # 3 answer-loss steps: the third is an audio batch (gradients through the collapsed tokens)
    config = TrainConfig(align_steps=6, steps=3, align_batch_size=4, batch_size=2, warmup_steps=1, seed=3)
    assert (config.image_projector, config.audio_projector, config.image_stats) == ("slots_mlp", "ctc_mlp", True)
    seen = []
    report = train_fusion(engine, train_dir=data, heldout_dir=None, out=tmp_path / "out", config=config,
                          system_prompt=SYSTEM_PROMPT, resume=False, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 9) for i in range(1, 10)]
    assert report["train"]["steps"] == 3 and all(math.isfinite(x) for x in report["train"]["last_loss"])
    llm = engine.training_llm
    trained = fusion.load(tmp_path / "out", llm=llm.name, hidden_size=llm.hidden_size, embed=llm.embed)
    spoken = [s for s in validate_dataset(data) if s.modality == "audio"]
    assert trained.config.audio_vocab == len(trained.audio_vocab_ids) > 2048  # transcripts' tokens + negatives
    assert set(trained.audio_vocab_ids.tolist()) >= set(llm.tokenizer(" " + spoken[0].transcript)["input_ids"])
    # The tokens it heard in training are kept for eval-fusion (see fusion_eval.all_heard).
    heard = sorted({i for s in spoken for i in llm.tokenizer(" " + s.transcript)["input_ids"]})
    assert fusion.read_meta(tmp_path / "out").metrics["train"][HEARD_KEY] == report["train"][HEARD_KEY] == heard
    frames = engine.whisper.encode(load_audio(spoken[0].path))
    assert trained.audio_tokens(frames.unsqueeze(0)).shape[-1] == llm.hidden_size
    # The image features are standardised by the training images' statistics, kept in the checkpoint.
    from mmchat.images import load_image
    patches = engine.image_encoder.encode([load_image(s.path) for s in validate_dataset(data)
                                           if s.modality == "image"]).patches
    assert trained.config.image_stats
    assert torch.allclose(trained.image_mean, patches.reshape(-1, patches.shape[-1]).mean(0), rtol=1e-2, atol=1e-2)
    # A checkpoint for another image encoder keeps this one's audio branch, bit for bit, and says
    # which encoder and feature width its image projector reads.
    from dataclasses import replace

    train_fusion(engine, train_dir=data, heldout_dir=None, out=tmp_path / "graft", config=replace(config, steps=0),
                 system_prompt=SYSTEM_PROMPT, resume=False, audio_from=tmp_path / "out")
    grafted = fusion.load(tmp_path / "graft", llm=llm.name, hidden_size=llm.hidden_size, embed=llm.embed)
    audio = {k: v for k, v in trained.state_dict().items() if k.startswith("audio")}
    assert audio and all(torch.equal(grafted.state_dict()[k], v) for k, v in audio.items())
    assert (grafted.config.image_encoder, grafted.config.image_dim) == (engine.model_name("image"),
                                                                       engine.image_encoder.patch_dim)
    assert grafted.weights()["audio"] == trained.weights()["audio"]  # the donor's weight comes with its branch
    # Going on from that checkpoint, only the weights trained: the image weight moves (its answer-loss
    # batches are all images), the taken audio branch keeps its weight, the projectors stay.
    report = train_fusion(engine, train_dir=data, heldout_dir=None, out=tmp_path / "weights", resume=False,
                          config=replace(config, steps=2, train="weights", lr=0.2), system_prompt=SYSTEM_PROMPT,
                          audio_from=tmp_path / "out", start_from=tmp_path / "graft")
    assert report["train"]["started_from"]["weights_sha256"] == fusion.read_meta(tmp_path / "graft").weights_sha256
    again = fusion.load(tmp_path / "weights", llm=llm.name, hidden_size=llm.hidden_size, embed=llm.embed)
    assert again.weights()["audio"] == grafted.weights()["audio"]
    assert again.weights()["image"] != grafted.weights()["image"]
    assert all(torch.equal(again.state_dict()[k], v) for k, v in grafted.state_dict().items() if k != "alpha")


# Same replies through llama.cpp as through torch: both run the GGUF's weights (torch as a bf16
# de-quantised copy), so they may part only where bf16 rounding tips a near-tie. Measured on these 20
# questions: EfficientNet's checkpoint right 16 and 16, the same verdict on all 20, 15 replies
# identical word for word; CLIP's 19 and 19, all 20, 18 identical. Tolerance: 90 % the same verdict.
SAME_ANSWER_SHARE = 0.9


def test_the_projector_answers_the_same_through_llama_cpp_as_through_torch(engine, image_engine, shipped, heldout):
    from mmchat.fusion_eval import REPLY_TOKENS, is_correct
    from mmchat.fusion_train import media_tokens, user_turn
    from mmchat.llm import GenerationConfig

    samples, features = heldout
    examples = ([e for e in build_examples(samples) if e.kind == "colour"][:10]
                + [e for e in build_examples(samples) if e.kind == "shape"][:10])
    config = GenerationConfig(max_new_tokens=REPLY_TOKENS, temperature=0.0)
    replies = {"llama.cpp": [], "torch": []}
    for e in examples:
        tokens, mask = media_tokens(shipped, features, [e])
        rows = tokens[0][mask[0] > 0]
        chat = [{"role": "system", "content": "You are mmchat."}, {"role": "user", "content": user_turn("image", e.question)}]
        for runtime, llm in (("llama.cpp", engine.llm), ("torch", engine.training_llm)):
            replies[runtime].append(llm.generate(chat, config=config, media=[rows]))
    hits = {k: [is_correct(r, e.answer) for r, e in zip(v, examples)] for k, v in replies.items()}
    same = sum(a == b for a, b in zip(*hits.values())) / len(examples)
    identical = sum(a == b for a, b in zip(*replies.values()))
    print(f"{image_engine.model_name('image')}: right {sum(hits['llama.cpp'])} vs {sum(hits['torch'])} of "
          f"{len(examples)}; same verdict {same:.0%}; identical replies {identical}")
    assert same >= SAME_ANSWER_SHARE, (hits, replies)
    assert abs(sum(hits["llama.cpp"]) - sum(hits["torch"])) <= 2, hits
