"""CLIP image encoder: the seeded random init (no real weights ship), fetched weights, backends.

The random-init model is deterministic and untrained: tests check shapes, determinism and that its
features still carry image content (colour from the pooled embedding, position in the patch tokens).
Fetched weights are exercised with a tiny CLIP served by a fake hub (no network).
"""

import copy
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmchat import download, quant, registry
from mmchat.vision import clip
from mmchat.vision.clip import (UNTRAINED, ImageEncoder, ImageFeatures, TransformersClipBackend,
                                  byte_level_clip_tokenizer, load_image_encoder)
from mmchat.errors import MMChatError
from mmchat.images import load_image
from test_download import FakeHub

NAME = "clip-vit-b-32"


@pytest.fixture(scope="module")
def rng_record():
    return {}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, rng_record):
    """The default encoder as the app gets it, with an empty cache: the seeded random init."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMCHAT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        rng_record["before"] = torch.random.get_rng_state()
        loaded = load_image_encoder()
        rng_record["after"] = torch.random.get_rng_state()
    return loaded


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def scene(seed: int = 0) -> Image.Image:
    """A few coloured shapes on a light background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (200, 150), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, 150)), int(rng.integers(0, 100))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x, y, x + 50, y + 50], fill=colour)
    return image


def test_random_init_is_untrained_and_ViT_B_32_sized(encoder, rng_record):
    assert isinstance(encoder, ImageEncoder)
    assert encoder.backend == "transformers" and encoder.name == NAME
    assert encoder.trained is False and UNTRAINED in encoder.status
    assert (encoder.embed_dim, encoder.patch_dim, encoder.num_patches) == (512, 768, 49)
    assert len(encoder.fingerprint) == 64 and int(encoder.fingerprint, 16) >= 0
    assert torch.equal(rng_record["before"], rng_record["after"])  # the caller's RNG is left alone


def test_cached_random_init_is_the_fresh_draw_with_half_size_layers(encoder):
    """The init kept in the cache is what a fresh seeded draw gives (the same fingerprint, so fusion
    checkpoints stay valid); its transformer layers hold fp16 weights, and its features stay within
    1e-3 of the fp32 draw's."""
    from transformers import CLIPConfig, CLIPModel

    fresh = clip._seeded(int(registry.get(NAME).settings.get("seed", 0)), lambda: CLIPModel(CLIPConfig()))
    fresh.eval().requires_grad_(False)
    state = {f"vision_model.{k}": v for k, v in fresh.vision_model.state_dict().items()}
    state.update({f"visual_projection.{k}": v for k, v in fresh.visual_projection.state_dict().items()})
    assert clip.weights_fingerprint(state, extra={"preprocess": encoder._preprocess_config()}) == encoder.fingerprint
    if quant.available():
        layers = encoder.vision.vision_model.encoder
        assert not [m for m in layers.modules() if type(m) is torch.nn.Linear]
        assert sum(isinstance(m, quant.HalfLinear) for m in layers.modules()) == 6 * len(layers.layers)
    images = [scene(seed) for seed in range(3)]
    with torch.inference_mode():
        pixels = encoder.processor(images=images, return_tensors="pt")["pixel_values"]
        out = fresh.vision_model(pixel_values=pixels)
        pooled = torch.nn.functional.normalize(fresh.visual_projection(out.pooler_output), dim=-1)
    got = encoder.encode(images)
    want = out.last_hidden_state[:, 1:]
    assert (got.patches - want).norm() / want.norm() < 1e-3
    assert torch.nn.functional.cosine_similarity(got.pooled, pooled).min() > 0.9999
    assert not torch.allclose(got.pooled[0], got.pooled[1], atol=1e-3)  # (the images differ)


def test_text_tower_is_loaded_only_for_zero_shot(encoder):
    fresh = TransformersClipBackend.random_init(registry.get(NAME))
    assert fresh._text is None
    fresh.encode([scene()])
    assert fresh._text is None
    assert [label for label, _ in fresh.zero_shot(scene(), ["x", "y"])] in (["x", "y"], ["y", "x"])
    assert fresh._text is not None


@pytest.mark.slow
def test_fingerprint_is_identical_in_another_process(encoder):
    code = ("from mmchat import registry; from mmchat.vision.clip import TransformersClipBackend as B; "
            "print(B.random_init(registry.get('clip-vit-b-32')).fingerprint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == encoder.fingerprint


FORMATS = {"PNG": {}, "BMP": {}, "WEBP": {"lossless": True}, "JPEG": {"quality": 95}, "GIF": {}}


def test_every_allowed_format_encodes(encoder):
    images = [load_image(encoded(scene(), fmt, **options)) for fmt, options in FORMATS.items()]
    features = encoder.encode([scene(), *images])
    assert isinstance(features, ImageFeatures)
    assert features.pooled.shape == (6, 512) and features.patches.shape == (6, 49, 768)
    assert features.pooled.dtype == torch.float32 and torch.isfinite(features.patches).all()
    torch.testing.assert_close(features.pooled.norm(dim=-1), torch.ones(6))
    reference = features.patches[0]
    for i, fmt in enumerate(FORMATS, start=1):
        if fmt in ("PNG", "BMP", "WEBP"):  # lossless: the very same pixels
            torch.testing.assert_close(features.patches[i], reference, atol=1e-4, rtol=1e-4)
        else:
            assert float(features.pooled[i] @ features.pooled[0]) > 0.98, fmt
    again = encoder.encode(images[:1])  # deterministic, bit for bit
    assert torch.equal(again.patches[0], encoder.encode(images[:1]).patches[0])


def test_batches_equal_single_images(encoder):
    images = [scene(seed) for seed in range(3)]
    batched = encoder.encode(images)
    single = [encoder.encode([im]) for im in images]
    torch.testing.assert_close(batched.pooled, torch.cat([s.pooled for s in single]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.patches, torch.cat([s.patches for s in single]), atol=1e-4, rtol=1e-4)
    small = copy.copy(encoder)
    small.batch_size = 2
    torch.testing.assert_close(small.encode(images).pooled, batched.pooled, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched.pooled[0], batched.pooled[1])  # different images differ


def test_empty_batch_rgba_input_and_type_errors(encoder):
    empty = encoder.encode([])
    assert empty.pooled.shape == (0, 512) and empty.patches.shape == (0, 49, 768)
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    torch.testing.assert_close(encoder.encode([rgba]).pooled, encoder.encode([white]).pooled)
    with pytest.raises(TypeError):
        encoder.encode([np.zeros((8, 8, 3))])


def drawn_square(colour, rng) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(120, 256, 3))
    image = Image.new("RGB", (160, 160), background)
    side = int(rng.integers(40, 100))
    x, y = (int(v) for v in rng.integers(0, 160 - side, 2))
    jittered = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-30, 31, 3), 0, 255))
    ImageDraw.Draw(image).rectangle([x, y, x + side, y + side], fill=jittered)
    return image


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, n_train: int) -> float:
    """Standardised L2-regularised logistic regression, trained on the first ``n_train`` rows."""
    train, test = features[:n_train], features[n_train:]
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    w = torch.zeros(features.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=300)

    def loss():
        optimiser.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(train @ w + b, labels[:n_train])
        value = value + 1e-3 * w.pow(2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    with torch.no_grad():
        return float((((test @ w + b) > 0).float() == labels[n_train:]).float().mean())


@pytest.mark.slow
def test_random_features_carry_colour(encoder, record_property):
    """A linear probe on 32 images tells red from blue squares on 32 others; shuffled labels cannot."""
    rng = np.random.default_rng(0)
    labels = torch.tensor([i % 2 for i in range(64)], dtype=torch.float32)
    images = [drawn_square((210, 40, 40) if i % 2 == 0 else (40, 40, 210), rng) for i in range(64)]
    start = time.perf_counter()
    encoder.encode(images[:8])
    per_image_s = (time.perf_counter() - start) / 8
    record_property("clip_encode_s_per_image_batch8", round(per_image_s, 3))
    print(f"\nCLIP ViT-B/32 encode, batch 8: {per_image_s * 1000:.0f} ms per image")
    pooled = encoder.encode(images).pooled
    assert probe_accuracy(pooled, labels, 32) >= 0.85
    shuffled = labels[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    assert probe_accuracy(pooled, shuffled, 32) <= 0.75


def test_patch_tokens_are_spatial(encoder):
    """Drawing in the top-left corner changes the top-left patch tokens far more than the others."""
    blank = Image.new("RGB", (224, 224), (200, 200, 200))
    marked = blank.copy()
    ImageDraw.Draw(marked).rectangle([0, 0, 63, 63], fill=(0, 0, 0))
    patches = encoder.encode([blank, marked]).patches
    change = (patches[1] - patches[0]).norm(dim=-1).reshape(7, 7)
    corner, elsewhere = change[:2, :2], change[2:, 2:]
    assert corner.min() > 5 * elsewhere.max()


def test_zero_shot_runs_untrained(encoder):
    labels = ["a red circle", "a blue square", "a dog", "a cat on a sofa"]
    ranked = encoder.zero_shot(scene(), labels)
    assert sorted(label for label, _ in ranked) == sorted(labels)
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert ranked == encoder.zero_shot(scene(), labels)  # deterministic
    assert encoder.zero_shot(scene(), ["only"]) == [("only", pytest.approx(1.0))]
    with pytest.raises(MMChatError, match="at least one label"):
        encoder.zero_shot(scene(), [])


def test_byte_level_tokenizer_uses_clip_vocabulary_ids():
    """Unmerged CLIP tokens: byte entries sit at the same ids as in OpenAI's vocabulary."""
    ids = byte_level_clip_tokenizer()("a photo of a dog.")["input_ids"]
    b = {c: ord(c) - ord("!") for c in "photfdg"}  # printable ASCII bytes come first, from "!"
    expected = [49406, 320, b["p"], b["h"], b["o"], b["t"], b["o"] + 256, b["o"], b["f"] + 256, 320,
                b["d"], b["o"], b["g"] + 256, 269, 49407]
    assert ids == expected  # 320 = "a</w>", 269 = ".</w>", as in the real CLIP vocabulary
    long_ids = byte_level_clip_tokenizer()("word " * 100, truncation=True, max_length=77)["input_ids"]
    assert len(long_ids) == 77 and long_ids[0] == 49406 and long_ids[-1] == 49407
    assert byte_level_clip_tokenizer()("Ünïcode ✓")["input_ids"][1:-1]  # every byte has a token


# --- fetched weights (a tiny CLIP served by the fake hub) ---

TINY = dict(
    text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 64, "patch_size": 16},
    projection_dim=24,
)
# OpenAI's preprocessor_config.json layout (legacy integer sizes), scaled to the tiny model.
OPENAI_STYLE_PREPROCESSOR = {
    "crop_size": 64, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 64,
}


def tiny_hub_files(tmp_path) -> tuple[dict[str, bytes], torch.nn.Module]:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(123)
    model = CLIPModel(CLIPConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    tokenizer = byte_level_clip_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(OPENAI_STYLE_PREPROCESSOR))
    (tmp_path / "vocab.json").write_text(json.dumps(tokenizer.get_vocab()))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    spec = registry.get(NAME)
    return {name: (tmp_path / name).read_bytes() for name in spec.hub_files}, model


def test_fetched_weights_are_loaded_and_trained(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))
    files, model = tiny_hub_files(tmp_path / "src")
    download.fetch_model(NAME, hub=FakeHub(files))
    loaded = load_image_encoder()
    assert loaded.trained and "pretrained" in loaded.status and UNTRAINED not in loaded.status
    assert (loaded.embed_dim, loaded.patch_dim, loaded.num_patches) == (24, 48, 16)
    assert loaded.fingerprint != encoder.fingerprint
    image = scene()
    features = loaded.encode([image])
    # Expected: the same model by hand — resize shortest side to 64 (bicubic), centre crop, normalise.
    small = image.resize((85, 64), Image.Resampling.BICUBIC).crop((10, 0, 74, 64))
    pixels = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = (torch.tensor(OPENAI_STYLE_PREPROCESSOR[k]).view(3, 1, 1) for k in ("image_mean", "image_std"))
    with torch.no_grad():
        out = model.vision_model(pixel_values=((pixels - mean) / std).unsqueeze(0))
        expected = torch.nn.functional.normalize(model.visual_projection(out.pooler_output), dim=-1)
    assert float(features.pooled @ expected.T) > 0.99
    assert features.patches.shape == (1, 16, 48)
    assert [label for label, _ in loaded.zero_shot(image, ["x", "y"])] in (["x", "y"], ["y", "x"])


def test_damaged_fetched_weights_are_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))
    files, _ = tiny_hub_files(tmp_path / "src")
    download.fetch_model(NAME, hub=FakeHub(files))
    weights = download.hub_dir(NAME) / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size: is_fetched still says yes
    with pytest.raises(MMChatError, match="could not be loaded") as info:
        load_image_encoder()
    assert "mmchat models fetch clip-vit-b-32" in str(info.value)


# --- backend choice ---

def test_backend_registry(monkeypatch, tmp_path):
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="unknown image encoder backend 'onnx'"):
        load_image_encoder(backend="onnx")
    with pytest.raises(MMChatError, match="not an image encoder"):
        load_image_encoder("minilm-l6")
    chosen = []
    monkeypatch.setitem(clip.BACKENDS, "transformers", lambda spec: chosen.append("transformers") or "tf")
    monkeypatch.setitem(clip.BACKENDS, "open_clip", lambda spec: chosen.append("open_clip") or "oc")
    assert load_image_encoder() == "tf"  # no open_clip weights
    weights = tmp_path / "models" / NAME / clip.OPEN_CLIP_SUBDIR
    weights.mkdir(parents=True)
    (weights / "open_clip_config.json").write_text("{}")
    (weights / "open_clip_model.safetensors").write_bytes(b"")
    assert clip.OpenClipBackend.weights_dir(registry.get(NAME)) == weights
    expected = "oc" if clip.OpenClipBackend.importable() else "tf"
    assert load_image_encoder() == expected
    assert load_image_encoder(backend="transformers") == "tf"


def test_open_clip_backend_where_it_imports(encoder):
    """Here open_clip cannot import (no torchvision): asking for it is a user error. Elsewhere it loads."""
    if not clip.OpenClipBackend.importable():
        with pytest.raises(MMChatError, match="open_clip backend is not available"):
            load_image_encoder(backend="open_clip")
        return
    loaded = load_image_encoder(backend="open_clip")
    features = loaded.encode([scene()])
    assert features.pooled.shape == (1, loaded.embed_dim)
    assert features.patches.shape == (1, loaded.num_patches, loaded.patch_dim)
