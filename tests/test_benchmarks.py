"""The benchmarks run (tiny sizes) and their report is what they measured. The figures themselves
are checked by ``python -m benchmarks``, not here: timings on a shared CPU are not test material."""

import json

import pytest

from benchmarks import common
from benchmarks.common import Result, Size

QUICK = Size.make(quick=True)


def test_report_merges_by_name_and_marks_targets(tmp_path):
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    meta = {"date": "2026-11-23", "load_before": 0.1}
    common.write_report([Result("a", 2.0, "×", target=1.05), Result("b", 70, "%", target=60, higher_is_better=True)],
                        meta=meta, json_path=json_path, md_path=md_path)
    common.write_report([Result("a", 1.0, "×", target=1.05)], meta=meta, json_path=json_path, md_path=md_path)
    rows = {r["name"]: r for r in json.loads(json_path.read_text())["results"]}
    assert rows["a"]["value"] == 1.0 and rows["a"]["passed"] is True
    assert rows["b"]["passed"] is True
    table = md_path.read_text()
    assert "| a | 1.00 × | ≤ 1.05 × | met |" in table and "| b | 70.00 % | ≥ 60.00 % | met |" in table


def test_failed_target_is_reported_as_not_met():
    assert Result("x", 30, "ms", target=20).passed is False
    assert "**not met**" in common.markdown([Result("x", 30, "ms", target=20).to_dict()])


def test_memory_retrieval_benchmark_runs():
    (result,) = __import__("benchmarks.memory", fromlist=["run"]).run(QUICK)
    assert result.value > 0 and result.detail["k"] == 8


@pytest.mark.slow
def test_llm_media_and_voice_benchmarks_run(engine):
    from benchmarks import llm, media, voice

    results = llm.run(QUICK, engine=engine) + media.run(QUICK, engine=engine) + voice.run(QUICK, engine=engine)
    by_name = {r.name: r for r in results}
    assert all(r.value > 0 for r in results), results
    decode = by_name["LLM decode / bandwidth bound"].detail
    assert decode["weight_MB"] > 100 and decode["copy_bandwidth_GBps"] > 0.1
    assert by_name["LLM stream vs transformers generate"].detail["same_text"]
    assert by_name["TTFT: profile+memories+10 turns+image vs text-only"].detail["context_tokens"] > 150
    (growth,) = [r for r in results if r.name.startswith("Reply time at")]
    assert all(tokens >= target for target, tokens in growth.detail["prompt_tokens"].items())
    assert growth.detail["decode_floor_ratio"] > 1
    (reuse,) = [r for r in results if r.name.endswith("cached prefix vs none")]
    assert reuse.detail["nothing_cached_s"] > 0
    assert by_name["Transcribe 5 s clip (ours)"].detail["ours_text"]


def test_llamacpp_benchmarks_run_ours_beside_bare_llama_cpp(engine):
    from benchmarks import llamacpp

    by_name = {r.name: r for r in llamacpp.run(QUICK, engine=engine)}
    decode = by_name["llama.cpp decode: ours / bare llama-cpp-python"].detail
    assert decode["ours_tokens_per_s"] > 0 and decode["bare_tokens_per_s"] > 0
    once = by_name["chat --once cold, wall"].detail
    assert "paris" in once["replies"]["ours"].lower() and "paris" in once["replies"]["bare"].lower()
    first_token = by_name["llama.cpp TTFT: profile+memories+10 turns+image vs text-only"].detail
    assert first_token["cached_tokens"] > 100 and first_token["context_tokens"] > first_token["cached_tokens"]


@pytest.mark.slow
def test_startup_benchmark_runs():
    from benchmarks import startup

    results = {r.name: r for r in startup.run(QUICK)}
    assert 0 < results["Cold start to window painted"].value < 60
    assert results["Cold start to first reply (CLI, 8 tokens)"].value > 0


def test_remote_benchmark_replays_a_recorded_stream_to_both_clients():
    from benchmarks import remote

    (result,) = remote.run(QUICK)
    assert result.detail["replies_identical"] and result.detail["text_chunks"] > 4
    assert result.detail["ours_ms"] > 0 and result.detail["raw_ms"] > 0
