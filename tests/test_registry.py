"""The registry's chat models: the fetchable GGUF entries and what their RAM need is computed from."""

import re

import pytest

from mmchat import registry

QWEN_GGUF = {  # name: (hub repository, layers, KV heads, head_dim, hidden size), from each model's config.json
    "qwen2.5-1.5b-instruct-q4": ("Qwen/Qwen2.5-1.5B-Instruct-GGUF", 28, 2, 128, 1536),
    "qwen2.5-3b-instruct-q4": ("Qwen/Qwen2.5-3B-Instruct-GGUF", 36, 2, 128, 2048),
    "qwen2.5-7b-instruct-q4": ("Qwen/Qwen2.5-7B-Instruct-GGUF", 28, 4, 128, 3584),
}


@pytest.mark.parametrize("name", sorted(QWEN_GGUF))
def test_the_bigger_qwen_models_are_fetchable_q4_k_m_ggufs(name):
    spec = registry.get(name)
    hub_id, layers, kv_heads, head_dim, hidden = QWEN_GGUF[name]
    assert spec.role is registry.Role.LLM and spec.source_format == "gguf" and not spec.bundled
    assert spec.hub_id == hub_id and spec.size_bytes > 1e9
    assert spec.settings == {"hidden_size": hidden, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
    size = re.search(r"Qwen2\.5-([\d.]+B)", hub_id).group(1).lower()
    first, *rest = spec.hub_files
    # llama.cpp opens the first file and finds the other parts of a split by its name.
    assert first.startswith(f"qwen2.5-{size}-instruct-q4_k_m") and first.endswith(".gguf")
    if rest:
        assert first.endswith(f"-00001-of-{len(spec.hub_files):05d}.gguf")
        assert rest == [first.replace("-00001-of-", f"-{i:05d}-of-") for i in range(2, len(spec.hub_files) + 1)]


def test_every_llama_cpp_model_has_the_shape_its_kv_cache_is_sized_by():
    ggufs = [m for m in registry.by_role(registry.Role.LLM) if m.source_format == "gguf"]
    assert {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", *QWEN_GGUF} <= {m.name for m in ggufs}
    for spec in ggufs:
        assert {"hidden_size", "layers", "kv_heads", "head_dim"} <= set(spec.settings), spec.name


def test_the_new_names_leave_the_hugging_face_entries_as_they_were():
    assert registry.get("qwen2.5-1.5b-instruct").source_format == "hf"
    assert registry.get("qwen2.5-1.5b-instruct-q4").source_format == "gguf"
    assert len({m.name for m in registry.MODELS}) == len(registry.MODELS)


def test_the_ram_need_is_the_file_the_kv_cache_at_mmchats_context_and_the_stated_overhead():
    from mmchat.llm import MAX_CONTEXT_TOKENS, gguf

    assert MAX_CONTEXT_TOKENS == 8192 and gguf.RUNTIME_OVERHEAD_BYTES == 536_870_912
    # By hand, for the 7B: K and V × 28 layers × 4 KV heads × 128 dims × 2 bytes (f16) = 57 344 bytes a
    # position; × 8192 positions = 469 762 048; + 4 683 073 632 (both parts) + 536 870 912 overhead.
    seven = registry.get("qwen2.5-7b-instruct-q4")
    assert gguf.kv_cache_bytes(seven, tokens=1) == 57_344
    assert gguf.kv_cache_bytes(seven) == 469_762_048
    assert gguf.ram_need(seven) == 5_689_706_592
    # The bundled models' KV caches are what llama.cpp reports making for them (verbose load, n_ctx 8192):
    # "KV buffer size = 96.00 MiB" for Qwen2.5-Coder-0.5B, "180.00 MiB" for SmolLM2-135M.
    assert gguf.kv_cache_bytes(registry.get("qwen2.5-coder-0.5b-instruct")) == 96 * 2**20
    assert gguf.kv_cache_bytes(registry.get("smollm2-135m-instruct")) == 180 * 2**20
    assert gguf.ram_need(registry.get("qwen2.5-coder-0.5b-instruct")) == 491_400_064 + 96 * 2**20 + 512 * 2**20
    # 1.5B: 2 × 28 × 2 × 128 × 2 × 8192 = 234 881 024; 3B: 2 × 36 × 2 × 128 × 2 × 8192 = 301 989 888.
    assert gguf.ram_need(registry.get("qwen2.5-1.5b-instruct-q4")) == 1_117_320_736 + 234_881_024 + 536_870_912
    assert gguf.ram_need(registry.get("qwen2.5-3b-instruct-q4")) == 2_104_932_768 + 301_989_888 + 536_870_912


def test_models_llama_cpp_does_not_run_have_no_ram_need_here():
    from mmchat.llm import gguf

    assert gguf.ram_need(registry.get("qwen2.5-1.5b-instruct")) is None  # torch: another sum
    assert gguf.ram_need(registry.get("whisper-base")) is None


def test_the_machines_memory_is_probed():
    from mmchat import probe

    found = probe.memory()
    assert found is not None and found.total > 2**30
    assert found.available is None or 0 < found.available <= found.total
