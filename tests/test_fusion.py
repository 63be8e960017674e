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
    from mmchat.cli import PROJECTOR_NAMES

    assert sorted(PROJECTOR_NAMES) == sorted(fusion.PROJECTORS)


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
    assert f.weights() == {"image": 0.5, "audio": 0.5}
    with torch.no_grad():
        f.alpha.copy_(torch.tensor([2.0, 0.0]))
    assert f.weights()["image"] > 0.85
    # A larger image weight scales the image group up.
    assert f.image_tokens(torch.randn(3, 49, 24))[:, :-1].pow(2).mean().sqrt() > 0.08


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


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MMChatError, match="train-fusion"):
        fusion.load(tmp_path, llm="toy-llm", hidden_size=32)
