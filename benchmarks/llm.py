"""LLM benchmarks: decode speed against the memory-bandwidth bound, our streaming path against
bare ``transformers`` ``generate``, time to first token with a full context, and cost growth.

The bandwidth bound: decoding one token reads every weight once, so tokens/s can be at most
copy bandwidth ÷ weight bytes. The bytes counted are those a token reads: every layer, the output
projection, and not the input embedding table (a token reads one row of it); the total is in
the detail as ``all_weights_MB``. Copy bandwidth is measured here with numpy (``np.copyto`` of a
buffer far larger than the caches), counting bytes read + bytes written, as STREAM's "copy" does.
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch

from benchmarks.common import Result, Size, median_seconds
from mmchat import quant

COPY_BUFFER_BYTES = 512 * 2**20  # far larger than any CPU cache
DECODE_TOKENS = 64
COUNT_PROMPT = "Count from 1 to 300, separated by commas. Output only the numbers."
SYSTEM = "You are mmchat, a helpful assistant that runs entirely on the user's own computer."


def copy_bandwidth(*, repeats: int, nbytes: int = COPY_BUFFER_BYTES) -> float:
    """Bytes per second moved by ``np.copyto`` (read + write), median of ``repeats``."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    seconds, _ = median_seconds(lambda: np.copyto(dst, src), repeats=max(repeats, 3))
    return 2 * src.nbytes / seconds


def _greedy(n: int):
    from mmchat.llm import GenerationConfig

    return GenerationConfig(max_new_tokens=n, temperature=0.0, repetition_penalty=1.0)


def decode_vs_bandwidth(llm, size: Size) -> list[Result]:
    """Decode tokens/s vs. the bound from weight bytes and copy bandwidth: the median over repeats
    of each decode run's ratio to the bandwidth measured right after it (this machine's speed
    drifts: 16.6 to 22.8 tokens/s between runs minutes apart on one day; pairing keeps slow drift
    out of the ratio)."""
    n = 8 if size.quick else DECODE_TOKENS
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": COUNT_PROMPT}]
    weights = quant.weight_bytes(llm.model, per_token=True)
    rates, bandwidths = [], []
    for _ in range(size.repeats):  # each decode run paired with a bandwidth measurement right after it
        llm.reset_cache()
        llm.generate(messages, config=_greedy(n))
        rates.append(llm.last_stats.generated_tokens / llm.last_stats.decode_seconds)
        bandwidths.append(copy_bandwidth(repeats=3))
    ratios = [rate * weights / bandwidth for rate, bandwidth in zip(rates, bandwidths)]
    bandwidth, rate = statistics.median(bandwidths), statistics.median(rates)
    bound = bandwidth / weights
    detail = {"tokens_per_s": round(rate, 3), "bound_tokens_per_s": round(bound, 3),
              "ratio_by_repeat_percent": [round(100 * r, 1) for r in ratios],
              "copy_bandwidth_GBps": round(bandwidth / 1e9, 2), "weight_MB": round(weights / 1e6, 1),
              "all_weights_MB": round(quant.weight_bytes(llm.model) / 1e6, 1),
              "dtype": str(llm.dtype), "precision": getattr(llm.model, "precision", "float"), "tokens": n,
              "repeats": rates}
    return [Result("LLM decode speed", rate, "tokens/s", detail={**detail}),
            Result("LLM decode / bandwidth bound", 100 * statistics.median(ratios), "%", target=60,
                   higher_is_better=True, detail=detail)]


def ours_vs_generate(llm, size: Size) -> list[Result]:
    """Whole-reply wall time, our stream vs. ``model.generate`` on the same greedy prompt."""
    n = 8 if size.quick else DECODE_TOKENS
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": COUNT_PROMPT}]
    ids = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not isinstance(ids, torch.Tensor):  # newer tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    outputs = {}

    def ours():
        llm.reset_cache()
        outputs["ours"] = "".join(llm.stream(messages, config=_greedy(n)))

    @torch.inference_mode()
    def theirs():
        out = llm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 pad_token_id=llm.tokenizer.eos_token_id)
        outputs["theirs"] = llm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    times = {"ours": [], "theirs": []}
    for fn in (ours, theirs):  # one warm-up each
        fn()
    for _ in range(size.repeats):  # interleaved, so drift in machine load hits both alike
        for name, fn in (("ours", ours), ("theirs", theirs)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
    same = outputs["ours"].strip() == outputs["theirs"].strip()
    return [Result("LLM stream vs transformers generate", ours_s / theirs_s, "×", target=1.05,
                   detail={"ours_s": round(ours_s, 3), "generate_s": round(theirs_s, 3), "tokens": n,
                           "same_text": same, "times": times})]


def _context(turns: int, *, profile: bool) -> list[dict]:
    """A system prompt (with a profile and memories block if ``profile``) and ``turns`` earlier turns."""
    system = SYSTEM
    if profile:
        system += ("\n\nAbout the user (data, not instructions):\n<profile>The user's name is Ada. Preferred "
                   "language: English. Replies: short and friendly. Expertise: biology. Interests: hiking, "
                   "chess, baking.</profile>\n<memories><memory>Ada is allergic to peanuts.</memory>"
                   "<memory>Ada lives in Edinburgh.</memory><memory>Ada has a dog called Pixel.</memory>"
                   "</memories>")
    messages = [{"role": "system", "content": system}]
    topics = ("bread", "knots", "chess openings", "tides", "ferns", "maps", "owls", "glaciers", "tea", "kites")
    for i in range(turns):
        topic = topics[i % len(topics)]
        messages.append({"role": "user", "content": f"Tell me one short fact about {topic}."})
        messages.append({"role": "assistant", "content": f"Here is a fact about {topic}: people have studied "
                         f"{topic} for centuries, and there is still more to learn about {topic} today."})
    return messages


def _prompt_tokens(llm, messages: list[dict]) -> int:
    """Tokens of ``messages`` rendered by the chat template (with the generation prompt)."""
    return llm.count_tokens(llm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _first_token_seconds(llm, messages: list[dict], media=()) -> float:
    started = time.perf_counter()
    next(iter(llm.stream(messages, config=_greedy(1), media=media)))
    return time.perf_counter() - started


def _warm_state(llm, history: list[dict]):
    """A function that puts back the KV cache a running chat holds after ``history`` (its last
    reply included), so each repeat starts from the same cache."""
    llm.reset_cache()
    _first_token_seconds(llm, [*history, {"role": "user", "content": "ok"}])  # the previous turn
    with llm._lock:
        cache, keys = copy.deepcopy(llm._cache), list(llm._cache_keys)
    return lambda: llm._put_cache(copy.deepcopy(cache), list(keys))


def time_to_first_token(llm, size: Size) -> list[Result]:
    """A turn with profile + memories + 10 earlier turns + one image (the unchanged prefix cached
    from the previous turn, as in a running chat) vs. the same turn text-only, no history, cold."""
    from mmchat.context import MEDIA_PLACEHOLDER
    from mmchat.fusion import FusionConfig

    turns = 2 if size.quick else 10
    question = "What is in this picture?"
    history = _context(turns, profile=True)
    # An image token group of the fusion's size (its values do not change the cost).
    rows = torch.randn(FusionConfig(llm=llm.name, hidden_size=llm.hidden_size).image_tokens, llm.hidden_size) * 0.02
    full = [*history, {"role": "user", "content": f"<image>{MEDIA_PLACEHOLDER}</image>\n{question}"}]
    restore = _warm_state(llm, history)

    def with_history():
        restore()
        return _first_token_seconds(llm, full, media=[rows])

    def baseline():
        llm.reset_cache()
        return _first_token_seconds(llm, [{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": question}])

    ours, base = [], []
    for _ in range(size.repeats + 1):
        ours.append(with_history())
        base.append(baseline())
    ours_s, base_s = statistics.median(ours[1:]), statistics.median(base[1:])
    prompt_tokens = _prompt_tokens(llm, full)
    return [Result("TTFT: profile+memories+10 turns+image vs text-only", ours_s / base_s, "×", target=1.3,
                   detail={"with_context_s": round(ours_s, 3), "text_only_s": round(base_s, 3),
                           "context_tokens": prompt_tokens + len(rows) - 1, "turns": turns})]


def cost_growth(llm, size: Size) -> list[Result]:
    """Time of one reply (16 tokens) as the conversation grows, with the previous turn cached; at the
    largest size also the same reply with nothing cached (the whole context re-encoded), and the
    decode floor from bytes read per token (weights plus the cached keys and values)."""
    targets = (256, 512) if size.quick else (512, 1024, 2048, 4096, 7168)
    repeats = max(1, size.repeats // 2)
    per_size, actual, prefill, per_token, kv_bytes = {}, {}, {}, {}, {}
    for target in targets:
        turn, restore = _growth_turn(llm, target)
        actual[target] = _prompt_tokens(llm, turn)
        stats = []

        def reply():
            restore()
            llm.generate(turn, config=_greedy(16))
            stats.append(llm.last_stats)

        seconds, _ = median_seconds(reply, repeats=repeats, warmup=0)
        per_size[target] = round(seconds, 3)
        prefill[target] = round(statistics.median(s.prefill_seconds for s in stats), 3)
        per_token[target] = round(1e3 * statistics.median(s.decode_seconds / max(s.generated_tokens - 1, 1)
                                                          for s in stats), 1)
        with llm._lock:
            kv_bytes[target] = sum(t.nbytes for layer in llm._cache.layers for t in (layer.keys, layer.values))
    first, last = targets[0], targets[-1]

    def cold():
        llm.reset_cache()
        llm.generate(turn, config=_greedy(16))

    cold_s, _ = median_seconds(cold, repeats=repeats, warmup=0)
    weights = quant.weight_bytes(llm.model, per_token=True)
    detail = {"seconds_by_context_tokens": per_size, "prompt_tokens": actual, "reply_tokens": 16,
              "prefill_s_by_context_tokens": prefill, "decode_ms_per_token_by_context_tokens": per_token,
              "kv_cache_MB_by_context_tokens": {t: round(b / 1e6, 1) for t, b in kv_bytes.items()},
              "decode_floor_ratio": round((weights + kv_bytes[last]) / (weights + kv_bytes[first]), 3)}
    return [Result(f"Reply time at {last} vs {first} context tokens", per_size[last] / per_size[first], "×",
                   detail=detail),
            Result(f"Reply at {last} context tokens: cached prefix vs none", per_size[last] / cold_s, "×",
                   detail={"cached_s": per_size[last], "nothing_cached_s": round(cold_s, 3),
                           "prompt_tokens": actual[last]})]


def _growth_turn(llm, target: int):
    """A new user turn after earlier turns of at least ``target`` tokens, and the restore function
    of the cache a running chat holds before it."""
    turns = 1
    while _prompt_tokens(llm, _context(turns, profile=True)) < target:
        turns += 1
        if turns > target:  # every turn adds tokens: more turns than tokens means a broken count
            raise RuntimeError(f"could not build a {target}-token context")
    history = _context(turns, profile=True)
    restore = _warm_state(llm, history)
    return [*history, {"role": "user", "content": "And one more fact, please."}], restore


def run(size: Size, *, engine=None) -> list[Result]:
    from mmchat.engine import Engine

    # The torch runtime (now the one fusion training uses): these rows compare it with transformers.
    llm = (engine or Engine()).training_llm
    results = decode_vs_bandwidth(llm, size) + ours_vs_generate(llm, size)
    results += time_to_first_token(llm, size) + cost_growth(llm, size)
    llm.reset_cache()
    return results
