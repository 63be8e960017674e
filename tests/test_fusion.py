import json

import pytest
import torch

from mmchat import fusion
from mmchat.errors import MMChatError
from mmchat.fusion import Fusion, FusionConfig, FusionMismatch, build_projector


def config(**kw):
    base = dict(llm="toy-llm", hidden_size=32, image_fingerprint="img" * 10, audio_fingerprint="aud" * 10,
                image_dim=24, audio_dim=16, embed_rms=0.05)
    return FusionConfig(**{**base, **kw})


def test_projector_factory_by_name():
    assert isinstance(build_projector("linear", 8, 4), torch.nn.Linear)
    mlp = build_projector("mlp2x_gelu", 8, 4)
    assert mlp(torch.zeros(2, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="unknown projector 'qformer'"):
        build_projector("qformer", 8, 4)


def test_the_cli_offers_every_projector():
    from mmchat.cli import AUDIO_PROJECTOR_NAMES, PROJECTOR_NAMES

    assert sorted(AUDIO_PROJECTOR_NAMES) == sorted(fusion.PROJECTORS)
    assert sorted(PROJECTOR_NAMES) == sorted(set(fusion.PROJECTORS) - fusion.COLLAPSING_PROJECTORS)


def test_train_fusion_cli_passes_the_image_and_audio_options(monkeypatch, tmp_path):
    from mmchat import cli, engine, fusion_train

    class NoModels:
        def __init__(self, llm=None, image=None):
            pass

        def model_name(self, kind):
            return "toy-llm"

    given = {}
    monkeypatch.setattr(engine, "Engine", NoModels)
    monkeypatch.setattr(fusion_train, "train_fusion", lambda _engine, **kw: given.update(kw) or {})
    argv = ["train-fusion", "--data", str(tmp_path), "--eval-limit", "0", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    assert (given["config"].image_grid, given["config"].image_slots, given["config"].image_stats) == (7, 32, True)
    assert cli.main([*argv, "--image-grid", "4", "--image-slots", "16", "--no-image-stats"]) == 0
    assert (given["config"].image_grid, given["config"].image_slots, given["config"].image_stats) == (4, 16, False)
    augment = lambda: (given["config"].audio_stretch, given["config"].audio_time_masks,
                       given["config"].audio_feature_masks)
    assert augment() == (0.0, 0, 0)
    assert cli.main([*argv, "--audio-stretch", "0.15", "--audio-time-masks", "2", "--audio-feature-masks", "3"]) == 0
    assert augment() == (0.15, 2, 3)
    assert given["audio_from"] is None
    assert cli.main([*argv, "--audio-from", str(tmp_path / "donor")]) == 0
    assert given["audio_from"] == tmp_path / "donor"


def test_token_group_shapes_scale_and_weights():
    torch.manual_seed(0)
    f = Fusion(config())
    image = f.image_tokens(torch.randn(3, 49, 24))
    assert image.shape == (3, 4 * 4 + 1, 32)
    # Output starts at the LLM's embedding scale (RMS ≈ embed_rms at equal weights).
    assert abs(image[:, :-1].pow(2).mean().sqrt().item() - 0.05) < 0.01
    frames = torch.randn(2, 50, 16)
    audio = f.audio_tokens(frames, torch.tensor([50, 18]))
    assert audio.shape == (2, 13 + 1, 32)  # ceil(50 / 4) tokens + summary
    # Padding frames beyond a clip's length give zero tokens: only ceil(18/4) = 5 are live.
    assert audio[1, 5:-1].abs().sum() == 0 and audio[1, :5].abs().sum() > 0
    assert f.weights() == {"image": 1.0, "audio": 1.0}
    before = f.audio_tokens(frames, torch.tensor([50, 18]))
    f.set_weight("image", 2.0)
    assert f.weights() == {"image": 2.0, "audio": 1.0}
    # A larger image weight scales the image group up, and leaves the audio group as it was.
    assert abs(f.image_tokens(torch.randn(3, 49, 24))[:, :-1].pow(2).mean().sqrt().item() - 0.1) < 0.02
    assert torch.equal(f.audio_tokens(frames, torch.tensor([50, 18])), before)


def test_checkpoints_without_modality_weights_keep_their_softmax(tmp_path):
    """A checkpoint written before ``modality_weights`` existed tied the weights as w = softmax(α) ×2:
    it loads with the gains it was trained with."""
    f = Fusion(FusionConfig(llm="tiny", hidden_size=32, image_dim=24, audio_dim=16, modality_weights="softmax"))
    with torch.no_grad():
        f.alpha.copy_(torch.tensor([-0.25, 0.25]))
    gains = f.weights()
    assert gains["image"] + gains["audio"] == pytest.approx(2.0, abs=1e-3) and gains["image"] < 0.8
    with pytest.raises(ValueError, match="softmax"):
        f.set_weight("image", 0.5)
    fusion.save(f, tmp_path, data_hash="x", metrics={}, trained_steps=0)
    meta = json.loads((tmp_path / fusion.META_FILE).read_text())
    del meta["config"]["modality_weights"]
    (tmp_path / fusion.META_FILE).write_text(json.dumps(meta))
    assert fusion.load(tmp_path, llm="tiny", hidden_size=32).weights() == gains


def test_a_seeded_fusion_starts_each_branch_from_its_own_seed():
    def audio_start(**image_shape):
        return {k: v for k, v in Fusion(config(audio_projector="ctc_mlp", audio_vocab=3, **image_shape),
                                        seed=5).state_dict().items() if k.startswith("audio")}

    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    small, large = audio_start(image_grid=2, image_slots=4), audio_start(image_grid=7, image_projector="slots_mlp")
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is left as it was
    assert small.keys() == large.keys() and "audio_blank" in small
    assert all(torch.equal(small[k], large[k]) for k in small)  # the image branch's shape does not move audio's
    again, other = Fusion(config(), seed=5), Fusion(config(), seed=6)
    assert torch.equal(Fusion(config(), seed=5).image.proj[0].weight, again.image.proj[0].weight)
    assert not torch.equal(other.image.proj[0].weight, again.image.proj[0].weight)
    assert not torch.equal(again.image.proj[0].weight[:, :16], again.audio.proj[0].weight[:, :16])


def test_whole_image_projector_makes_slot_tokens_from_every_cell():
    torch.manual_seed(0)
    f = Fusion(config(image_projector="slots_mlp", image_slots=6, image_grid=2)).eval()
    assert f.config.image_tokens == 7
    x = torch.randn(3, 49, 24)
    tokens = f.image_tokens(x)
    assert tokens.shape == (3, 7, 32)
    # Each slot depends on the whole image: changing only the last cell's patches moves slot 0.
    y = x.clone()
    y[:, 48] += 5 * torch.randn(24)
    assert not torch.allclose(f.image_tokens(y)[:, 0], tokens[:, 0])
    with pytest.raises(ValueError, match="cells ≥ 1 and slots ≥ 1"):
        build_projector("slots_mlp", 8, 4)


def test_whole_clip_audio_projector_reads_only_the_speech_present():
    torch.manual_seed(0)
    f = Fusion(config(audio_projector="slots_attn", audio_cells=8, audio_slots=5))
    assert isinstance(f.audio.proj, fusion.AttentionSlotProjector)
    frames = torch.randn(2, 50, 16)
    tokens = f.audio_tokens(frames, torch.tensor([50, 12]))
    assert tokens.shape == (2, 6, 32)
    # Frames past a clip's length (padding) do not change its tokens.
    padded = frames.clone()
    padded[1, 12:] = 100.0
    assert torch.allclose(f.audio_tokens(padded, torch.tensor([50, 12]))[1], tokens[1])


def test_long_audio_is_pooled_to_the_token_cap():
    f = Fusion(config(max_audio_tokens=8, audio_stack=4))
    frames = torch.randn(500, 16)
    fitted = f.fit_audio_frames(frames)
    assert fitted.shape == (32, 16)
    assert f.audio_tokens(fitted.unsqueeze(0)).shape == (1, 9, 32)
    assert f.fit_audio_frames(frames[:20]).shape == (20, 16)


def test_save_load_round_trip_and_refusals(tmp_path):
    torch.manual_seed(1)
    f = Fusion(config())
    fusion.save(f, tmp_path, data_hash="d" * 64, metrics={"image_acc": 0.9}, trained_steps=7)
    meta = json.loads((tmp_path / fusion.META_FILE).read_text())
    assert meta["config"]["llm"] == "toy-llm" and meta["metrics"] == {"image_acc": 0.9} and len(meta["weights_sha256"]) == 64

    loaded = fusion.load(tmp_path, llm="toy-llm", hidden_size=32, image_fingerprint="img" * 10, audio_fingerprint="aud" * 10)
    x = torch.randn(1, 49, 24)
    assert torch.allclose(loaded.image_tokens(x), f.image_tokens(x), atol=2e-3)  # saved as fp16

    with pytest.raises(FusionMismatch, match="trained for the LLM toy-llm"):
        fusion.load(tmp_path, llm="other-llm", hidden_size=32)
    with pytest.raises(FusionMismatch, match="different image encoder weights"):
        fusion.load(tmp_path, llm="toy-llm", hidden_size=32, image_fingerprint="real-clip")
    # Not loaded yet (None) is not a mismatch.
    fusion.load(tmp_path, llm="toy-llm", hidden_size=32, image_fingerprint=None, audio_fingerprint=None)

    data = bytearray((tmp_path / fusion.WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / fusion.WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(MMChatError, match="do not match their sha256"):
        fusion.load(tmp_path, llm="toy-llm", hidden_size=32)


def test_image_features_are_standardised_by_the_training_statistics_and_kept_in_the_checkpoint(tmp_path):
    torch.manual_seed(2)
    train = [torch.randn(49, 24) * 3 + 5 for _ in range(20)]  # a large common part, as the random-init CLIP's
    f = Fusion(config(image_stats=True)).eval()
    f.fit_image_stats(train)
    stacked = torch.stack(train).reshape(-1, 24)
    assert torch.allclose(f.image_mean, stacked.mean(0), atol=1e-5)
    assert torch.allclose(f.image_std, stacked.std(0, unbiased=False), atol=1e-4)

    # The projector sees standardised features: shifting and scaling every image (and refitting) changes nothing.
    g = Fusion(config(image_stats=True)).eval()
    g.load_state_dict(f.state_dict())
    g.fit_image_stats([t * 4 - 7 for t in train])
    x = train[0].unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(g.image_tokens(x * 4 - 7), f.image_tokens(x), atol=1e-4)

    fusion.save(f, tmp_path)
    loaded = fusion.load(tmp_path, llm="toy-llm", hidden_size=32)
    assert torch.allclose(loaded.image_mean, f.image_mean, rtol=1e-3)
    assert torch.allclose(loaded.image_tokens(x), f.image_tokens(x), atol=2e-3)
    with pytest.raises(ValueError, match="at least one image"):
        f.fit_image_stats([])
    with pytest.raises(ValueError, match="image_stats=False"):
        Fusion(config()).fit_image_stats(train)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MMChatError, match="train-fusion"):
        fusion.load(tmp_path, llm="toy-llm", hidden_size=32)


def test_ctc_audio_projector_drops_blank_stacks_and_merges_repeats(tmp_path):
    """``ctc_mlp``: each stack reads as a vocabulary token or blank; the LLM gets one token per run."""
    torch.manual_seed(0)
    f = Fusion(config(audio_projector="ctc_mlp", audio_vocab=3, audio_stack=1, mlp_hidden=16))
    table = torch.randn(5000, 32)
    f.audio_vocab_ids.copy_(torch.tensor([7, 2049, 4093]))  # 2049 is not exact in fp16: stored as int
    with pytest.raises(RuntimeError, match="use_vocabulary"):
        f.audio_tokens(torch.randn(1, 4, 16))
    f.use_vocabulary(lambda ids: table[ids])
    v0, v1, v2 = (table[i] for i in (7, 2049, 4093))
    blank = f.audio_blank.detach()
    # clip 1 reads: v0 v0 blank v1 blank v1 v2 (+ one padding stack); clip 2 only blanks
    stacks = torch.stack([torch.stack([v0, 1.1 * v0, blank, v1, blank, v1, v2, v0]),
                          torch.stack([blank] * 8)])
    mask = torch.tensor([[1.0] * 7 + [0.0], [1.0] * 3 + [0.0] * 5])
    group, live = f._collapse(stacks, mask)
    assert live.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    expected = [(v0 + 1.1 * v0) / 2, v1, v1, v2]
    for row, want in zip(group[0], expected):
        assert torch.nn.functional.cosine_similarity(row, want, dim=0) > 0.999
    merged_rms = torch.stack([v0, 1.1 * v0]).pow(2).mean().sqrt()
    assert torch.isclose(group[0, 0].pow(2).mean().sqrt(), merged_rms)  # a merged run keeps its RMS
    assert not group[1].any()

    tokens = f.audio_tokens(torch.randn(2, 40, 16), torch.tensor([40, 9]))
    counts = (tokens[:, :-1].abs().amax(-1) > 0).sum(1)
    heard = f.heard(torch.randn(2, 40, 16), torch.tensor([40, 9]))
    assert all(set(ids) <= {7, 2049, 4093} for ids in heard)
    # The summary token is the mean of the live tokens.
    for row, n in zip(tokens, counts):
        if n:
            assert torch.allclose(row[-1], row[:n].mean(0), atol=1e-6)

    fusion.save(f, tmp_path)
    loaded = fusion.load(tmp_path, llm="toy-llm", hidden_size=32, embed=lambda ids: table[ids])
    assert loaded.audio_vocab_ids.tolist() == [7, 2049, 4093]
    frames = torch.randn(1, 30, 16)
    assert loaded.heard(frames) == f.heard(frames)
    with pytest.raises(ValueError, match="audio projector"):
        Fusion(config(image_projector="ctc_mlp"))


def test_a_voice_message_adds_one_token_per_word_heard_and_nothing_when_none_is():
    """The chat's audio path with a ``ctc_mlp`` checkpoint: the collapsed tokens plus the summary,
    and no audio group at all (only the transcript text) when every stack reads as blank."""
    from types import SimpleNamespace

    import numpy as np

    from mmchat.llm import MEDIA_PLACEHOLDER
    from mmchat.media import MediaEncoder

    torch.manual_seed(0)
    f = Fusion(config(audio_projector="ctc_mlp", audio_vocab=3, audio_stack=4, mlp_hidden=16))
    f.audio_vocab_ids.copy_(torch.tensor([1, 2, 3]))
    f.use_vocabulary(lambda ids: torch.randn(10, 32)[ids])
    engine = SimpleNamespace(whisper=SimpleNamespace(encode=lambda audio: torch.randn(40, 16)),
                             llm=SimpleNamespace(dtype=torch.bfloat16))
    media = MediaEncoder(engine, fusion=f, audio_fusion=True)
    speech = np.zeros(16000, dtype=np.float32)

    f._read = lambda stacks, mask: torch.tensor([[0, 0, 3, 1, 1, 1, 3, 0, 2, 2]])  # 3 is blank
    part = media.audio(speech, transcript="x")
    assert part.text == f"<audio>{MEDIA_PLACEHOLDER}</audio>"
    assert part.tensors[0].shape == (5, 32) and part.tensors[0].dtype == torch.bfloat16  # 4 runs + summary
    f._read = lambda stacks, mask: torch.full(mask.shape, 3)
    assert media.audio(speech, transcript="x").text == ""


def test_the_apps_training_follows_each_shipped_recipe():
    """Train fusion (Settings) makes what scripts/train-*-fusion-asset.sh made for that image encoder."""
    from mmchat.fusion_train import shipped_recipe

    vision = shipped_recipe("qwen2.5-coder-0.5b-instruct", "efficientnet-lite0")
    assert vision.vision_data and vision.data.train_photos == 1500
    assert vision.audio_from.name == "clip-vit-b-32" and (vision.audio_from / "fusion.json").is_file()
    assert (vision.train.steps, vision.train.train) == (60, "weights")
    clip = shipped_recipe("qwen2.5-coder-0.5b-instruct", "clip-vit-b-32")
    assert not clip.vision_data and clip.audio_from is None and clip.train.steps == 0


@pytest.mark.parametrize(("guess", "lines", "faces", "fused"), [
    (0.12, (), 0, True),  # a drawing: the classifier unsure, no text, no face
    (0.9, (), 0, True),  # a drawn disc the classifier is sure is a ping-pong ball, or a photo of a thing
    (0.12, (), 1, False),  # a photo of a person
    (0.12, ("Traceback (most recent call last):", "FileNotFoundError: [Errno 2] No such file or directory"), 0, False),
])
def test_image_tokens_go_only_where_they_add_to_the_evidence(guess, lines, faces, fused):
    """The projector learned drawings (their shape) and photos of things: on a traceback its tokens got
    "This screenshot shows a pale square", on a photo of a person "a football helmet"."""
    from types import SimpleNamespace

    from PIL import Image

    from mmchat.llm import MEDIA_PLACEHOLDER
    from mmchat.media import MediaEncoder
    from mmchat.vision.features import Guess, ImageFeatures
    from mmchat.vision.ocr import TextReading

    torch.manual_seed(0)
    encoder = SimpleNamespace(trained=True, backend="test", encode_and_recognise=lambda image: (
        ImageFeatures(torch.zeros(1, 8), torch.randn(1, 49, 24)), [Guess("kite", guess)]))
    engine = SimpleNamespace(image_encoder=encoder, face_finder=SimpleNamespace(count=lambda image: faces),
                             text_reader=SimpleNamespace(read=lambda image: TextReading(lines, 0.1)),
                             llm=SimpleNamespace(dtype=torch.bfloat16))
    part = MediaEncoder(engine, fusion=Fusion(config()), image_fusion=True).image(Image.new("RGB", (64, 48)), index=1)
    assert (MEDIA_PLACEHOLDER in part.text) == fused and len(part.tensors) == int(fused)
    assert ("FileNotFoundError" in part.text) == bool(lines)
