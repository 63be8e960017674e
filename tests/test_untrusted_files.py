"""Model files are data, never code: no code path unpickles, and a tampered, truncated or hostile
file (a fusion checkpoint, a cached conversion, a pickle planted where weights are read) is detected
by sha256 or refused with an MMChatError, never executed.

The hostile fixture is a pickle whose ``__reduce__`` writes a marker file when unpickled; the test
first proves it is live (an unsafe ``torch.load`` in a subprocess does create the marker).
"""

import ast
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reliability
from mmchat import fusion
from mmchat.cache import ConversionCache, cached_conversions
from mmchat.errors import MMChatError
from mmchat.fusion import Fusion, FusionConfig

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((ROOT / "mmchat").rglob("*.py")), *sorted((ROOT / "ui").rglob("*.py")),
           *sorted((ROOT / "scripts").rglob("*.py"))]
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


class Planted:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER-code-was-executed"
    yield path
    assert not path.exists(), "a planted pickle was executed"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"line {node.lineno}: imports {n}" for n in names if n and n.split(".")[0] in PICKLING_MODULES]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        attr = node.func.attr
        if owner == "torch" and attr == "load" and _keyword(node, "weights_only") is not True:
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if owner in ("np", "numpy") and attr == "load" and _keyword(node, "allow_pickle") is not False:
            found.append(f"line {node.lineno}: np.load without allow_pickle=False")
        is_model = owner.endswith(("Model", "ForCausalLM")) and attr == "from_pretrained"
        if is_model and _keyword(node, "use_safetensors") is not True and not any(
                kw.arg == "gguf_file" for kw in node.keywords):
            found.append(f"line {node.lineno}: {owner}.from_pretrained may read a pickled .bin")
    return found


def test_no_code_path_can_unpickle():
    """Every source file: no pickle-family imports, torch.load only with weights_only=True, np.load
    only with allow_pickle=False, model from_pretrained only with use_safetensors=True (or GGUF)."""
    problems = {}
    for path in SOURCES:
        found = _unsafe_calls(ast.parse(path.read_text(), filename=str(path)))
        if found:
            problems[str(path.relative_to(ROOT))] = found
    assert problems == {}
    reliability.count(len(SOURCES), note=f"{len(SOURCES)} source files scanned")


def test_the_scan_catches_what_it_should():
    bad = ("import pickle\nimport joblib\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n"
           "z = np.load(p)\nm = AutoModelForCausalLM.from_pretrained(d)\n")
    assert len(_unsafe_calls(ast.parse(bad))) == 6
    good = ("x = torch.load(p, weights_only=True)\nz = np.load(p, allow_pickle=False)\n"
            "m = AutoModelForCausalLM.from_pretrained(d, use_safetensors=True)\n"
            "g = AutoModelForCausalLM.from_pretrained(d, gguf_file='x.gguf')\n")
    assert _unsafe_calls(ast.parse(good)) == []


def test_the_planted_pickle_is_live(tmp_path):
    """Proof the fixture is dangerous: unpickled unsafely (in a subprocess), it runs its code."""
    live = tmp_path / "live-marker"
    planted = tmp_path / "planted.pt"
    torch.save({"weight": Planted(live)}, planted)
    code = f"import torch; torch.load({str(planted)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    assert live.read_text() == "code ran"


# -- a planted pickle where weights are read -------------------------------------------------------
def _converted(name: str) -> Path:
    found = cached_conversions(name)
    if not found:
        pytest.skip(f"no cached conversion of {name} in this user cache yet (it is built on first use)")
    return found[0]


def test_llm_directory_with_only_a_pickled_bin_is_refused(tmp_path, marker):
    from mmchat.llm import LLM

    source = _converted("smollm2-135m-instruct")
    model_dir = tmp_path / "llm"
    model_dir.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, model_dir / name)
    torch.save({"model.embed_tokens.weight": Planted(marker)}, model_dir / "pytorch_model.bin")
    with pytest.raises(MMChatError, match="Could not load the model"):
        LLM.from_directory(model_dir)


def test_whisper_conversion_with_a_pickle_and_a_forged_manifest_is_refused(tmp_path, monkeypatch, marker):
    """The attacker replaced the weights and rewrote the manifest's sha256 to match: the cache
    accepts the directory, and the safetensors reader still refuses the pickle."""
    from mmchat.encoders import whisper, whisper_convert

    source = _converted("whisper-base")
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "cache" / "models" / "whisper-base" / source.name
    shutil.copytree(source, copy)
    weights = copy / whisper_convert.WEIGHTS_FILE
    torch.save({"encoder.conv1.weight": Planted(marker)}, weights)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][whisper_convert.WEIGHTS_FILE] = {
        "size": weights.stat().st_size, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert whisper_convert.converted_dir("whisper-base") == copy  # forged, so it verifies
    with pytest.raises(MMChatError, match="could not be read"):
        whisper.Whisper._load("whisper-base", progress=None)


def _toy_fusion(directory: Path) -> Path:
    config = FusionConfig(llm="toy-llm", hidden_size=32, image_dim=24, audio_dim=16, embed_rms=0.05)
    torch.manual_seed(0)
    return fusion.save(Fusion(config), directory)


def _forge_sha(directory: Path) -> None:
    meta = json.loads((directory / fusion.META_FILE).read_text())
    meta["weights_sha256"] = hashlib.sha256((directory / fusion.WEIGHTS_FILE).read_bytes()).hexdigest()
    (directory / fusion.META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("forged", [False, True], ids=["sha256-unchanged", "sha256-forged"])
def test_fusion_checkpoint_replaced_by_a_pickle_is_refused(tmp_path, marker, forged):
    directory = _toy_fusion(tmp_path / "fusion")
    (directory / fusion.WEIGHTS_FILE).write_bytes(pickle.dumps(Planted(marker)))
    torch.save({"w": Planted(marker)}, directory / "fusion.pt")  # a .pt next to it is never read
    if forged:
        _forge_sha(directory)
    with pytest.raises(MMChatError, match="could not be read" if forged else "do not match their sha256"):
        fusion.load(directory, llm="toy-llm", hidden_size=32)


@pytest.mark.parametrize("forged", [False, True], ids=["sha256-unchanged", "sha256-forged"])
def test_truncated_fusion_checkpoint_is_refused(tmp_path, forged):
    directory = _toy_fusion(tmp_path / "fusion")
    weights = directory / fusion.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if forged:
        _forge_sha(directory)
    with pytest.raises(MMChatError, match="could not be read" if forged else "do not match their sha256"):
        fusion.load(directory, llm="toy-llm", hidden_size=32)


def test_truncated_fusion_metadata_is_refused(tmp_path):
    directory = _toy_fusion(tmp_path / "fusion")
    meta = directory / fusion.META_FILE
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(MMChatError, match="metadata .* is unreadable"):
        fusion.load(directory, llm="toy-llm", hidden_size=32)


def test_truncated_cached_conversion_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))
    builds = []

    def build(out: Path) -> None:
        builds.append(out)
        (out / "model.safetensors").write_bytes(os.urandom(10_000))

    cache = ConversionCache("toy", "ef" * 32, 1)
    directory = cache.load_or_build(build)
    original = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(original[:5_000])
    assert not cache.verify()
    cache.load_or_build(build)
    assert len(builds) == 2 and len((directory / "model.safetensors").read_bytes()) == 10_000


def test_pickled_npy_clip_is_refused(tmp_path, marker):
    from mmchat.fusion_data.speech import read_clip

    path = tmp_path / "clip.npy"
    np.save(path, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        read_clip(path)


@pytest.mark.parametrize("damage", ["truncated", "pickle-with-forged-sha256"])
def test_chat_falls_back_to_words_with_the_reason_when_the_checkpoint_is_damaged(data_dir, marker, damage):
    """Where the chat finds its checkpoint (<data dir>/fusion/<llm>): refused, not loaded, and the
    reason is what the user is shown (the encoder's note); the chat goes on without fusion."""
    from mmchat.media import checkpoint_dirs, media_encoder
    from mmchat_ui.demo import DemoEngine

    engine = DemoEngine()
    directory = checkpoint_dirs(engine.llm.name)[0]
    config = FusionConfig(llm=engine.llm.name, hidden_size=engine.llm.hidden_size, image_dim=24, audio_dim=16,
                          embed_rms=0.05)
    fusion.save(Fusion(config), directory)
    weights = directory / fusion.WEIGHTS_FILE
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        weights.write_bytes(pickle.dumps(Planted(marker)))
        _forge_sha(directory)
    encoder = media_encoder(engine)
    assert encoder.fusion is None
    assert ("do not match their sha256" if damage == "truncated" else "could not be read") in encoder.reason
