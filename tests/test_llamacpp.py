"""The chat runtime on llama.cpp, with the real bundled GGUF (offline): the fused-token path is exact,
the KV cache keeps the shared prefix and stays consistent after Stop, text comes out whole."""

import os
import threading

import pytest
import torch

from mmchat.engine import RUNTIME_ENV, THREADS_ENV, default_threads, llm_runtime
from mmchat.errors import MMChatError
from mmchat.llm import MEDIA_PLACEHOLDER, GenerationConfig
from mmchat.llm.llamacpp import LlamaCppLLM
from mmchat.probe import physical_cores

GREEDY = GenerationConfig(temperature=0, max_new_tokens=24)
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def llm():
    return LlamaCppLLM.load()


def test_the_bundled_gguf_runs_as_shipped(llm):
    assert llm.name == "qwen2.5-coder-0.5b-instruct" and llm.path.suffix == ".gguf"
    assert llm.hidden_size == 896 and llm.dtype == torch.float32
    reply = llm.generate(FRANCE, config=GREEDY)
    assert "paris" in reply.lower(), reply
    stats = llm.last_stats
    assert stats.stop_reason == "eos" and 0 < stats.generated_tokens < 24
    assert stats.prompt_tokens == len(llm._build_prompt(FRANCE, [], max_prompt_tokens=4096).keys)


def test_the_prompt_is_rendered_and_tokenised_as_transformers_does(llm, tmp_path):
    """The GGUF's chat template through our Jinja set-up and llama.cpp's tokenizer give the same ids
    as transformers' tokenizer for the same file: a system prompt, turns, special tokens, Unicode."""
    from transformers import AutoTokenizer

    (tmp_path / "model.gguf").symlink_to(llm.path)
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    chat = [{"role": "system", "content": "You are mmchat. The user's name is Zoë."},
            {"role": "user", "content": "Hi! 日本語で？ Use `code` <b>tags</b>."},
            {"role": "assistant", "content": "Sure.\n\n```python\nprint('☕')\n```"},
            {"role": "user", "content": "And   spaces\ttabs?"}]
    text = reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert llm._render(chat) == text
    assert llm._ids(text) == reference(text, add_special_tokens=False)["input_ids"]


def test_token_embeddings_fed_as_rows_give_the_same_reply_as_the_tokens(llm):
    """The fused-token path: the question's own token embeddings, entered as media rows at its
    place in the prompt, must be answered exactly as the tokens are."""
    question = FRANCE[0]["content"]
    by_tokens = llm.generate(FRANCE, config=GREEDY)
    rows = llm.embed(llm.encode(question))
    assert rows.shape == (llm.count_tokens(question), 896)
    llm.reset_cache()
    by_rows = llm.generate([{"role": "user", "content": MEDIA_PLACEHOLDER}], config=GREEDY, media=[rows])
    assert by_rows == by_tokens and "paris" in by_rows.lower()


def test_embedding_rows_are_the_torch_copys_within_its_rounding(llm):
    """Fusion checkpoints are trained against the torch copy (bf16 rows of the same de-quantised table)."""
    from mmchat.engine import Engine

    torch_llm = Engine().training_llm
    ids = torch.tensor([0, 9707, 151643, 151644, 151645, 42, 77091])
    ours, theirs = llm.embed(ids), torch_llm.embed(ids).float()
    assert ours.shape == theirs.shape == (7, 896)
    assert (ours - theirs).abs().max() < 5e-4  # bf16 keeps 8 bits: |x| < 0.1 rounds by < 4e-4


def test_the_next_turn_reuses_the_shared_prefix_and_answers_as_a_fresh_cache(llm):
    first = llm.generate(FRANCE, config=GREEDY)
    turn = FRANCE + [{"role": "assistant", "content": first},
                     {"role": "user", "content": "And of Italy? Answer in one word."}]
    again = llm.generate(turn, config=GREEDY)
    reused = llm.last_stats.reused_tokens
    assert reused >= llm.last_stats.prompt_tokens - 20, llm.last_stats
    llm.reset_cache()
    fresh = llm.generate(turn, config=GREEDY)
    assert llm.last_stats.reused_tokens == 0
    assert again == fresh and "rome" in fresh.lower()


def test_stop_mid_reply_leaves_a_cache_the_next_reply_can_use(llm):
    stop = threading.Event()
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    chunks = []
    for chunk in llm.stream(story, config=GenerationConfig(temperature=0, max_new_tokens=200), stop=stop):
        chunks.append(chunk)
        if len(chunks) == 10:
            stop.set()
    assert llm.last_stats.stop_reason == "stopped" and len(chunks) <= 11
    after_stop = llm.generate(FRANCE, config=GREEDY)
    llm.reset_cache()
    assert after_stop == llm.generate(FRANCE, config=GREEDY)


def test_a_stream_abandoned_midway_frees_the_runtime_for_the_next(llm):
    stream = llm.stream([{"role": "user", "content": "Count from 1 to 50."}], config=GREEDY)
    next(stream)
    del stream  # closed by the garbage collector: its lock and cache are given back
    assert "paris" in llm.generate(FRANCE, config=GREEDY).lower()


def test_text_split_across_tokens_comes_out_whole(llm):
    text = "café ☕ 日本語 🦙 naïve — done"
    detok = llm._detokenizer()
    pieces = [detok.push(token) for token in llm._ids(text)] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_media_rows_must_match_the_placeholders_and_the_width(llm):
    with pytest.raises(ValueError, match="placeholders"):
        llm.generate(FRANCE, config=GREEDY, media=[torch.zeros(2, 896)])
    with pytest.raises(ValueError, match="896"):
        llm.generate([{"role": "user", "content": MEDIA_PLACEHOLDER}], config=GREEDY, media=[torch.zeros(2, 5)])


def test_threads_default_to_the_physical_cores_and_can_be_set(monkeypatch):
    assert 1 <= physical_cores() <= os.cpu_count()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads() == physical_cores()
    monkeypatch.setenv(THREADS_ENV, "1")
    assert default_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "lots")
    assert default_threads() == physical_cores()


def test_gguf_models_run_on_llama_cpp_unless_torch_is_asked_for(monkeypatch):
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    assert llm_runtime("qwen2.5-coder-0.5b-instruct") == "llama.cpp"
    assert llm_runtime("qwen2.5-7b-instruct-q4") == "llama.cpp"  # fetched or not: its fetch is a GGUF
    assert llm_runtime("qwen2.5-0.5b-instruct") == "torch"  # a Hugging Face download: no GGUF
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert llm_runtime("qwen2.5-coder-0.5b-instruct") == "torch"
    assert llm_runtime("qwen2.5-3b-instruct-q4") == "llama.cpp"  # no torch copy is made of a fetched GGUF
    monkeypatch.setenv(RUNTIME_ENV, "vllm")
    with pytest.raises(MMChatError, match="Unknown LLM runtime"):
        llm_runtime("qwen2.5-coder-0.5b-instruct")


def test_a_damaged_gguf_is_refused_with_a_clear_message(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 4096)
    with pytest.raises(MMChatError, match="could not load"):
        LlamaCppLLM.from_file(bad)


def test_the_threads_setting_reaches_llama_cpp(monkeypatch):
    from mmchat import settings
    from mmchat.engine import Engine
    from mmchat_ui.services import _engine

    assert settings.from_dict({"llm_threads": 3}).llm_threads == 3
    assert settings.from_dict({"llm_threads": -1}).llm_threads == 0  # out of range: the default
    from types import SimpleNamespace

    loaded = []
    monkeypatch.setattr(LlamaCppLLM, "load", classmethod(
        lambda cls, name, threads, progress: loaded.append(threads) or SimpleNamespace(threads=threads)))
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    chosen = _engine(settings.Settings(llm_threads=3)).llm
    default = _engine(settings.Settings()).llm  # 0: one per physical core
    other = Engine(llm_threads=1).with_models(image="clip-vit-b-32").llm
    assert loaded == [3, default_threads(), 1]
    # Only threads nobody chose give way to busy CPUs.
    assert (chosen.adapt_threads, default.adapt_threads, other.adapt_threads) == (False, True, False)
    monkeypatch.setenv(THREADS_ENV, "2")
    assert Engine().llm.adapt_threads is False


def test_a_model_opened_ahead_is_what_the_load_takes(monkeypatch):
    from mmchat.llm import gguf

    opened = []
    real = gguf.open_llama
    monkeypatch.setattr(gguf, "open_llama", lambda file, **kw: opened.append(file) or real(file, **kw))
    gguf.open_ahead("smollm2-135m-instruct", threads=1)
    small = LlamaCppLLM.load("smollm2-135m-instruct", threads=1)
    assert len(opened) == 1 and small.path == opened[0] and not gguf._opened
    assert small.generate(FRANCE, config=GREEDY)
    LlamaCppLLM.load("smollm2-135m-instruct", threads=1)  # nothing opened ahead now: opens its own
    assert len(opened) == 2


def test_a_failure_while_opening_ahead_reaches_the_load(monkeypatch, tmp_path):
    from mmchat.llm import gguf

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 4096)
    monkeypatch.setattr(gguf, "path", lambda spec, progress=None: bad)
    gguf.open_ahead("smollm2-135m-instruct", threads=1)
    with pytest.raises(MMChatError, match="could not load"):
        LlamaCppLLM.load("smollm2-135m-instruct", threads=1)


def test_opening_ahead_imports_no_torch():
    """What `chat --once` runs before its heavy imports must leave torch to the main thread."""
    import subprocess
    import sys

    code = ("import sys; from mmchat.engine import Engine, default_threads; from mmchat.llm import gguf; "
            "Engine(llm='smollm2-135m-instruct').open_llm_ahead(); "
            "gguf.take_opened('smollm2-135m-instruct', threads=default_threads()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- GGUF models fetched from the hub (a fake hub: nothing is downloaded) ----------------------------
@pytest.fixture
def models_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def split_smollm(tmp_path_factory):
    """The bundled SmolLM2-135M GGUF rewritten as a two-part split GGUF, as the 7B is published (no real
    split GGUF is small enough to ship): {part number: bytes}."""
    import gguf as gguf_py
    from gguf.scripts.gguf_new_metadata import copy_with_new_metadata

    from mmchat import registry

    reader = gguf_py.GGUFReader(registry.get("smollm2-135m-instruct").locate_parts()[0])
    out = tmp_path_factory.mktemp("split") / "smollm.gguf"
    writer = gguf_py.GGUFWriter(out, reader.fields["general.architecture"].contents(),
                                split_max_tensors=len(reader.tensors) // 2 + 1)
    copy_with_new_metadata(reader, writer, {}, [])
    return {n: (out.parent / f"smollm-{n:05d}-of-00002.gguf").read_bytes() for n in (1, 2)}


def test_an_unfetched_gguf_says_how_to_fetch_it(models_cache):
    with pytest.raises(MMChatError, match="qwen2.5-3b-instruct-q4 is not fetched yet") as info:
        LlamaCppLLM.load("qwen2.5-3b-instruct-q4", threads=1)
    assert "mmchat models fetch qwen2.5-3b-instruct-q4" in str(info.value)


def test_a_fetched_gguf_is_its_hub_file_and_a_damaged_one_is_fetched_again(models_cache):
    from test_download import FakeHub

    from mmchat import download, registry
    from mmchat.llm import gguf

    spec = registry.get("qwen2.5-1.5b-instruct-q4")
    download.fetch_model(spec.name, hub=FakeHub({"qwen2.5-1.5b-instruct-q4_k_m.gguf": b"GGUF" + bytes(4096)}))
    assert gguf.path(spec) == download.hub_dir(spec.name) / "qwen2.5-1.5b-instruct-q4_k_m.gguf"
    with open(gguf.path(spec), "ab") as f:
        f.write(b"more")  # no longer the size the hub gave
    with pytest.raises(MMChatError, match="incompletely fetched or damaged") as info:
        gguf.path(spec)
    assert "mmchat models fetch qwen2.5-1.5b-instruct-q4" in str(info.value)


def test_a_fetched_split_gguf_runs_on_llama_cpp_from_its_first_part(models_cache, split_smollm):
    """The 7B entry fetched (its two file names serving a real split GGUF): the engine's loader opens the
    first part, llama.cpp finds the second beside it, and the model answers."""
    from test_download import FakeHub

    from mmchat import download, registry
    from mmchat.engine import Engine
    from mmchat.llm import gguf

    spec = registry.get("qwen2.5-7b-instruct-q4")
    first, second = spec.hub_files
    download.fetch_model(spec.name, hub=FakeHub({first: split_smollm[1], second: split_smollm[2]}))
    assert gguf.path(spec) == download.hub_dir(spec.name) / first
    llm = Engine(llm=spec.name, llm_threads=1).llm
    assert isinstance(llm, LlamaCppLLM) and llm.name == spec.name and llm.path == gguf.path(spec)
    assert llm.hidden_size == 576  # SmolLM's (llama.cpp refuses a split GGUF with a part missing)
    reply = llm.generate(FRANCE, config=GREEDY)
    assert reply.strip() and llm.last_stats.generated_tokens > 0


def test_a_fetched_gguf_llama_cpp_cannot_load_is_fetched_again(models_cache):
    from test_download import FakeHub

    from mmchat import download

    name = "qwen2.5-1.5b-instruct-q4"
    download.fetch_model(name, hub=FakeHub({"qwen2.5-1.5b-instruct-q4_k_m.gguf": b"GGUF" + bytes(4096)}))
    with pytest.raises(MMChatError, match="could not load") as info:
        LlamaCppLLM.load(name, threads=1)
    assert f"mmchat models fetch {name}" in str(info.value) and "Reinstall" not in str(info.value)


def test_a_fetched_gguf_has_no_torch_copy_for_fusion_training_and_says_so():
    from mmchat import registry
    from mmchat.llm_convert import model_dir

    with pytest.raises(MMChatError, match="runs on llama.cpp only.*training fusion needs one"):
        model_dir(registry.get("qwen2.5-7b-instruct-q4"))


def test_threads_not_chosen_by_the_user_give_way_to_busy_cpus(llm):
    """Every CPU kept busy by other processes: the next reply runs on one thread; with them gone and the
    CPUs idle, on all of its threads again. A thread count the user chose is kept whatever the load."""
    import subprocess
    import sys
    import time

    cpus = len(os.sched_getaffinity(0))
    messages = [{"role": "user", "content": "Say yes."}]
    config = GenerationConfig(temperature=0, max_new_tokens=2)
    try:
        llm.adapt_threads = True
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
        try:
            llm.generate(messages, config=config)  # a reading starts
            time.sleep(1.5)
            llm.generate(messages, config=config)
            assert llm.active_threads == 1
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        time.sleep(1.5)
        llm.generate(messages, config=config)
        assert llm.active_threads == llm.threads
        llm.adapt_threads = False
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
        try:
            time.sleep(1.5)
            llm.generate(messages, config=config)
            assert llm.active_threads == llm.threads
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
    finally:
        llm.adapt_threads = False
