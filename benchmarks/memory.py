"""Memory retrieval: top-8 by pᵢ = softmax(qᵀmᵢ/τ) over 100k stored memories (384-d MiniLM
vectors), through the same index the chat uses."""

from __future__ import annotations

from benchmarks.common import Result, Size

TARGET_MS = 20


def run(size: Size, *, engine=None) -> list[Result]:
    del engine
    from mmchat.memory import benchmark_retrieval

    n = 10_000 if size.quick else 100_000
    figures = benchmark_retrieval(n=n, repeats=5 if size.quick else 50)
    return [Result(f"Memory retrieval top-{figures['k']} over {n // 1000}k", figures["median_ms"], "ms",
                   target=TARGET_MS, detail=figures)]
