"""Whisper-base, converted from the bundled CTranslate2 weights, on speech synthesized by piper."""

import json
import struct
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from mmchat import cache
from mmchat.audio import SAMPLE_RATE, load_audio
from mmchat.encoders import whisper as whisper_module
from mmchat.encoders import whisper_convert
from mmchat.encoders.whisper import Transcript, Whisper, _loop_period
from mmchat.encoders.whisper_model import N_FRAMES, log_mel_spectrogram, mel_filters
from mmchat.errors import MMChatError
from speech import SENTENCES, clip, synthesize, wer, with_silence


@pytest.fixture(scope="module")
def whisper():
    return Whisper.load()


def test_transcribes_synthesized_speech(whisper):
    errors = {}
    for name, text in SENTENCES.items():
        result = whisper.transcribe(clip(name))
        assert isinstance(result, Transcript) and result.speech and result.language == "en"
        errors[name] = wer(text, result.text)
    print("WER per clip:", errors)
    assert np.mean(list(errors.values())) <= 0.2
    assert errors["fox"] <= 0.2


def test_natural_voice_and_padding_around_speech(whisper):
    text = "Please call me back after lunch."
    audio = with_silence(synthesize(text, natural=True), before_s=3.0, after_s=4.0, noise_dbfs=-60.0)
    result = whisper.transcribe(audio)
    assert wer(text, result.text) <= 0.2
    assert result.duration_s == pytest.approx(len(audio) / SAMPLE_RATE)


def test_trimmed_context_matches_full_window(whisper):
    """Running the encoder on just the speech gives the same words as the stock 30 s window."""
    audio = clip("garden")
    trimmed = whisper.transcribe(audio).text
    with torch.inference_mode():
        xa = whisper._encode_window(audio, tail_pad_s=30.0)
        assert xa.shape[1] == N_FRAMES // 2
        full = whisper.tokenizer.decode(whisper._greedy(xa, "en").tokens).strip()
    assert wer(full, trimmed) == 0.0


def test_silence_and_noise_never_become_text(whisper, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("the decoder ran on silence")

    monkeypatch.setattr(Whisper, "_greedy", no_decoding)
    rng = np.random.default_rng(0)
    for audio in (np.zeros(5 * SAMPLE_RATE, dtype=np.float32),
                  (rng.standard_normal(4 * SAMPLE_RATE) * 0.01).astype(np.float32),
                  np.zeros(0, dtype=np.float32)):
        result = whisper.transcribe(audio)
        assert result.text == "" and not result.speech
    assert whisper.encode(np.zeros(SAMPLE_RATE, dtype=np.float32)).shape == (0, 512)


def test_wav_44k_stereo_and_flac_files(whisper, tmp_path):
    text = SENTENCES["milk"]
    speech = synthesize(text, sample_rate=44_100)
    wav = tmp_path / "question.wav"
    sf.write(wav, np.stack([speech, speech], axis=1), 44_100, subtype="PCM_16")
    flac = tmp_path / "question.flac"
    sf.write(flac, synthesize(text, sample_rate=22_050), 22_050, format="FLAC")
    for path in (wav, flac):
        assert wer(text, whisper.transcribe(load_audio(path)).text) <= 0.2


def test_language_detection_and_bad_language(whisper):
    assert whisper.transcribe(clip("fox"), language=None).language == "en"
    with pytest.raises(MMChatError, match="language"):
        whisper.transcribe(clip("fox"), language="xx")
    with pytest.raises(ValueError):
        whisper.transcribe(np.zeros((2, SAMPLE_RATE), dtype=np.float32))


def test_long_audio_is_transcribed_in_windows(whisper):
    """40 s of speech: two windows, cut in a pause; words from both halves come through."""
    texts = list(SENTENCES.values()) * 2
    pieces = [with_silence(synthesize(t), before_s=0.0, after_s=1.2) for t in texts]
    audio = np.concatenate(pieces)
    assert len(audio) > 35 * SAMPLE_RATE
    assert len(whisper_module._windows(audio)) == 2
    result = whisper.transcribe(audio)
    assert wer(" ".join(texts), result.text) <= 0.2


def test_encode_returns_frames_for_the_speech_present(whisper):
    assert whisper.d_model == 512
    short = whisper.encode(synthesize("Hello there."))
    long = whisper.encode(synthesize("Hello there. I hope you are having a lovely day today."))
    padded = whisper.encode(with_silence(synthesize("Hello there."), before_s=2.0, after_s=2.0))
    assert short.ndim == 2 and short.shape[1] == 512 and short.dtype == torch.float32
    assert 0 < short.shape[0] < long.shape[0]
    assert abs(padded.shape[0] - short.shape[0]) <= 25  # silence is trimmed (0.5 s slack for padding)
    assert torch.isfinite(long).all() and not long.requires_grad and not long.is_inference()


def test_weights_are_the_stored_ones_without_float_copies(whisper):
    """Loaded straight from the file (nothing left on the meta device, no random init), the token
    table kept half-size and shared by the output projection, everything else float32."""
    net = whisper.net
    tensors = [*net.parameters(), *net.buffers()]
    assert not [t for t in tensors if t.is_meta]
    table = net.decoder.token_embedding.weight
    assert table.dtype == torch.float16
    assert {t.dtype for t in tensors if t is not table} == {torch.float32}
    assert sum(t.numel() * t.element_size() for t in tensors) < 80e6  # packed linears aside; fp32 would be 290 MB


def test_fingerprint_is_the_converted_weights_hash(whisper):
    directory = whisper_convert.converted_dir("whisper-base")
    assert whisper.fingerprint == cache.sha256_file(directory / whisper_convert.WEIGHTS_FILE)
    dims = json.loads((directory / whisper_convert.DIMS_FILE).read_text())
    assert dims == {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 512, "n_audio_head": 8,
                    "n_audio_layer": 6, "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 512,
                    "n_text_head": 8, "n_text_layer": 6}


def test_features_match_the_reference_extractor():
    from transformers import WhisperFeatureExtractor
    from transformers.audio_utils import mel_filter_bank

    reference_bank = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0,
                                     max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney",
                                     mel_scale="slaney")
    assert np.allclose(mel_filters(80).numpy(), reference_bank.T, atol=1e-7)
    audio = clip("fox")
    reference = WhisperFeatureExtractor()(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")
    ours = log_mel_spectrogram(audio, padding=N_FRAMES * 160)[:, :N_FRAMES].numpy()
    assert np.abs(ours - reference["input_features"][0]).max() < 1e-3


def test_loop_detection():
    assert _loop_period([1, 2, 3, 4]) == 0
    assert _loop_period([7, 5, 5, 5, 5]) == 1
    assert _loop_period([7, 1, 2, 1, 2, 1, 2]) == 0  # three times is not yet a loop
    assert _loop_period([7] + [1, 2] * 4) == 2
    sentence = list(range(100, 112))
    assert _loop_period([3] + sentence * 2) == 12  # a whole sentence said twice


def test_unknown_model():
    with pytest.raises(MMChatError):
        Whisper.load("no-such-model")
    with pytest.raises(MMChatError, match="not a CTranslate2 Whisper"):
        whisper_convert.converted_dir("piper-joe-medium")


# -- conversion cache and the CTranslate2 reader ---------------------------------------------------
def test_conversion_is_cached_verified_and_rebuilt_on_tamper(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))
    start = time.perf_counter()
    directory = whisper_convert.converted_dir("whisper-base")
    first_s = time.perf_counter() - start
    weights = directory / whisper_convert.WEIGHTS_FILE
    original = cache.sha256_file(weights)
    start = time.perf_counter()
    assert whisper_convert.converted_dir("whisper-base") == directory
    second_s = time.perf_counter() - start
    print(f"conversion {first_s:.1f} s, verified cached load {second_s:.2f} s")
    assert second_s < first_s
    assert weights.stat().st_mtime_ns == weights.stat().st_mtime_ns  # untouched by the cached load

    with open(weights, "r+b") as f:  # flip bytes in the middle of a tensor
        f.seek(weights.stat().st_size // 2)
        f.write(b"\x00\x01\x02\x03")
    assert cache.sha256_file(weights) != original
    rebuilt = whisper_convert.converted_dir("whisper-base")
    assert cache.sha256_file(rebuilt / whisper_convert.WEIGHTS_FILE) == original


def _write_ct2(path, variables: dict, aliases: dict, *, spec="WhisperSpec", version=6):
    """A model.bin in ctranslate2's layout (model_spec.py ``_serialize``)."""
    type_ids = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("float16"): 4}

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, value in sorted(variables.items()):
        value = np.asarray(value)
        out += string(name) + struct.pack("<B", value.ndim)
        out += b"".join(struct.pack("<I", d) for d in value.shape)
        out += struct.pack("<BI", type_ids[value.dtype], value.nbytes) + value.tobytes()
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += string(alias) + string(target)
    path.write_bytes(out)


def test_ct2_reader_handles_aliases_dtypes_and_int8(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3)).astype(np.float32)
    scale = (127 / np.abs(weight).max(axis=1)).astype(np.float32)
    path = tmp_path / "model.bin"
    _write_ct2(path, {"a/weight": weight.astype(np.float16), "q/weight": np.round(weight * scale[:, None]).astype(np.int8),
                      "q/weight_scale": scale, "encoder/num_heads": np.array(8, dtype=np.int16)},
               {"b/weight": "a/weight"})
    model = whisper_convert.CT2Model(path)
    assert model.spec_name == "WhisperSpec" and model.scalar("encoder/num_heads") == 8
    assert model.array("a/weight").dtype == torch.float16
    assert torch.equal(model.weight("b/weight"), model.weight("a/weight"))
    assert torch.allclose(model.weight("q/weight"), torch.from_numpy(weight), atol=0.02)


def test_ct2_reader_rejects_other_files(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"not a ctranslate2 model at all")
    with pytest.raises(MMChatError, match="not a readable CTranslate2"):
        whisper_convert.CT2Model(path)
    _write_ct2(path, {"x": np.zeros(2, dtype=np.float32)}, {}, spec="TransformerSpec")
    with pytest.raises(MMChatError, match="not a Whisper"):
        whisper_convert.dims_of(whisper_convert.CT2Model(path))


def test_fetched_model_is_converted_from_its_hub_copy(tmp_path, monkeypatch):
    """A downloaded CTranslate2 model (here: the base weights standing in for whisper-small)."""
    import shutil

    from mmchat import download

    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MMChatError, match="has not been downloaded"):
        whisper_convert.locate_source("whisper-small")
    base = whisper_convert.locate_source("whisper-base")
    hub = download.hub_dir("whisper-small")
    hub.mkdir(parents=True)
    cache.join_parts(base.parts, hub / "model.bin", expected_sha256=base.sha256)
    shutil.copy(base.config, hub / "config.json")
    shutil.copy(base.tokenizer, hub / "tokenizer.json")
    shutil.copy(base.tokenizer.with_name("vocabulary.txt"), hub / "vocabulary.txt")
    files = {f.name: {"filename": f.name, "size": f.stat().st_size, "checksum": cache.sha256_file(f),
                      "commit": "test"} for f in hub.iterdir()}
    (hub / download.MANIFEST).write_text(json.dumps({"name": "whisper-small", "hub_id": "Systran/faster-whisper-small",
                                                     "commit": "test", "files": files}))
    source = whisper_convert.locate_source("whisper-small")
    assert source.sha256 == base.sha256 and source.parts == (hub / "model.bin",)
    directory = whisper_convert.converted_dir("whisper-small")
    assert json.loads((directory / whisper_convert.DIMS_FILE).read_text())["n_audio_state"] == 512
