"""The chat runtime on llama.cpp against bare llama-cpp-python on the same GGUF, in one run:
decode speed, ``chat --once`` from a cold process, and the time to the first token of an image
turn in a running chat against a text-only one."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from benchmarks.common import ROOT, Result, Size
from benchmarks.llm import COUNT_PROMPT, DECODE_TOKENS, SYSTEM, _context, _greedy

QUESTION = "What is the capital of France?"
ONCE_TARGET_S = 2.5
ONCE_RATIO_TARGET = 1.5

# The same question and settings through llama-cpp-python alone: load, render the GGUF's template,
# answer greedily, print. ``{path}`` and ``{threads}`` are filled in.
BARE_ONCE = """
from llama_cpp import Llama
llm = Llama(model_path={path!r}, n_ctx=8192, n_batch=512, n_threads={threads}, n_threads_batch={threads}, verbose=False)
out = llm.create_chat_completion(messages=[{{"role": "user", "content": {question!r}}}], temperature=0.0,
                                 max_tokens=512, repeat_penalty=1.1, top_k=40, top_p=0.9)
print(out["choices"][0]["message"]["content"])
"""


def decode_vs_bare(llm, size: Size) -> list[Result]:
    """Decode tokens/s of our loop (sampling, detokenising, Stop checks around ``llama_decode``) and
    of bare llama-cpp-python (its ``eval`` and greedy ``sample``) on the same prompt tokens, alternated."""
    import llama_cpp
    from llama_cpp import Llama

    n = 8 if size.quick else DECODE_TOKENS
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": COUNT_PROMPT}]
    prompt_ids = llm._ids(llm._render(messages))
    bare = Llama(model_path=str(llm.path), n_ctx=llm.context_length, n_batch=512, n_threads=llm.threads,
                 n_threads_batch=llm.threads, verbose=False)

    def ours() -> float:
        llm.reset_cache()
        llm.generate(messages, config=_greedy(n))
        return llm.last_stats.generated_tokens / llm.last_stats.decode_seconds

    def theirs() -> float:
        bare.reset()
        bare.eval(prompt_ids)
        started, tokens = time.perf_counter(), 0
        while tokens < n:
            token = bare.sample(temp=0.0, repeat_penalty=1.0)
            if llama_cpp.llama_vocab_is_eog(bare._model.vocab, token):  # as llama-cpp-python's own loop checks
                break
            tokens += 1
            if tokens < n:
                bare.eval([token])
        return tokens / (time.perf_counter() - started)

    ours(), theirs()  # warm-up
    rates = {"ours": [], "bare": []}
    for _ in range(size.repeats):
        rates["ours"].append(ours())
        rates["bare"].append(theirs())
    bare.close()
    mine, base = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    return [Result("llama.cpp decode: ours / bare llama-cpp-python", mine / base, "×", target=0.95,
                   higher_is_better=True,
                   detail={"ours_tokens_per_s": round(mine, 2), "bare_tokens_per_s": round(base, 2), "tokens": n,
                           "threads": llm.threads, "rates": {k: [round(r, 2) for r in v] for k, v in rates.items()}})]


def once_vs_bare(llm, size: Size) -> list[Result]:
    """Wall time of ``mmchat chat --temporary --once`` in a fresh process (import, verify and load the
    model, answer) against a bare llama-cpp-python script doing the same, alternated."""
    ours_cmd = [sys.executable, "-m", "mmchat", "chat", "--temporary", "--once", QUESTION, "--temperature", "0",
                "--threads", str(llm.threads)]
    bare_cmd = [sys.executable, "-c", BARE_ONCE.format(path=str(llm.path), threads=llm.threads, question=QUESTION)]
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    replies = {}
    for i in range(1 + (1 if size.quick else 3)):  # the first pair warms the page cache, unmeasured
        for name, cmd in (("ours", ours_cmd), ("bare", bare_cmd)):
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
            replies[name] = done.stdout.strip()
            if i:
                times[name].append(elapsed)
    ours_s, bare_s = statistics.median(times["ours"]), statistics.median(times["bare"])
    detail = {"ours_s": round(ours_s, 3), "bare_s": round(bare_s, 3), "replies": replies,
              "times": {k: [round(t, 3) for t in v] for k, v in times.items()}}
    return [Result("chat --once cold, wall", ours_s, "s", target=ONCE_TARGET_S, detail=detail),
            Result("chat --once cold: ours / bare llama-cpp-python", ours_s / bare_s, "×", target=ONCE_RATIO_TARGET,
                   detail=detail)]


def image_turn_first_token(llm, size: Size) -> list[Result]:
    """Time to the first token of a turn with profile + memories + 10 earlier turns + an image (the
    earlier turns in the KV cache from the previous reply, as in a running chat) against the same
    question text-only, with nothing before it and nothing cached."""
    import torch

    from mmchat.context import MEDIA_PLACEHOLDER
    from mmchat.fusion import FusionConfig

    turns = 2 if size.quick else 10
    question = "What is in this picture?"
    history = _context(turns, profile=True)
    rows = torch.randn(FusionConfig(llm=llm.name, hidden_size=llm.hidden_size).image_tokens, llm.hidden_size) * 0.02
    full = [*history, {"role": "user", "content": f"<image>{MEDIA_PLACEHOLDER}</image>\n{question}"}]

    def first_token(messages, media=()) -> float:
        started = time.perf_counter()
        stream = llm.stream(messages, config=_greedy(1), media=media)
        next(iter(stream))
        elapsed = time.perf_counter() - started
        stream.close()
        return elapsed

    def running_chat() -> float:
        llm.reset_cache()
        first_token([*history, {"role": "user", "content": "ok"}])  # the previous turn, unmeasured
        seconds = first_token(full, media=[rows])
        counts.append((llm.last_stats.prompt_tokens, llm.last_stats.reused_tokens))
        return seconds

    def text_only() -> float:
        llm.reset_cache()
        return first_token([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])

    ours, base, counts = [], [], []
    for _ in range(size.repeats + 1):
        ours.append(running_chat())
        base.append(text_only())
    ours_s, base_s = statistics.median(ours[1:]), statistics.median(base[1:])
    return [Result("llama.cpp TTFT: profile+memories+10 turns+image vs text-only", ours_s / base_s, "×", target=1.3,
                   detail={"with_context_s": round(ours_s, 3), "text_only_s": round(base_s, 3),
                           "context_tokens": counts[-1][0], "cached_tokens": counts[-1][1], "turns": turns})]


def run(size: Size, *, engine=None) -> list[Result]:
    from mmchat.engine import Engine, llm_runtime

    engine = engine or Engine()
    if llm_runtime(engine.model_name("llm")) != "llama.cpp":
        raise RuntimeError("these benchmarks measure the llama.cpp runtime (unset MMCHAT_LLM_RUNTIME)")
    llm = engine.llm
    results = decode_vs_bare(llm, size) + image_turn_first_token(llm, size) + once_vs_bare(llm, size)
    llm.reset_cache()
    return results
