"""`mmchat eval-vision`: the shipped models, end to end, on real photos, rendered screenshots and
drawings (:mod:`mmchat.vision.eval_sets`), through the same chat path the app uses.

Each case is one fresh temporary chat (nothing is stored): the picture and its question go in,
the reply is read greedily, and it is right when it contains an expected word (photos, drawings:
any case, as a whole word, plurals too) or an expected string exactly (screenshots).
``fusion=False`` turns image fusion off, so the same cases measure evidence alone against
evidence with fusion tokens.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from mmchat.vision.eval_sets import SETS, Case

MAX_NEW_TOKENS = 96  # enough for a sentence or two; the expected words come early in a right reply


def is_right(reply: str, case: Case) -> bool:
    if case.exact:
        return any(wanted in reply for wanted in case.expected)
    text = reply.lower()
    return any(re.search(rf"\b{re.escape(word.lower())}(s|es)?\b", text) for word in case.expected)


def cases(sets: Sequence[str], *, n: int, seed: int) -> list[Case]:
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise ValueError(f"unknown set(s) {', '.join(unknown)}; known: {', '.join(SETS)}")
    return [case for name in sets for case in SETS[name](n=n, seed=seed)]


def run(engine, chosen: Sequence[Case], *, fusion: bool = True,
        progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Ask every case; returns {"fusion": ..., "image_fusion_active": ..., "results": [...], "summary": {...}}."""
    from mmchat.chat import ChatSession
    from mmchat.llm import GenerationConfig
    from mmchat.media import media_encoder

    media = media_encoder(engine, image=fusion, audio=False)
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, repetition_penalty=1.1)
    results = []
    for i, case in enumerate(chosen):
        session = ChatSession(engine, None, media=media, generation=config)
        started = time.monotonic()
        events = list(session.send(case.question, images=[case.image()]))
        reply = "".join(e.text for e in events if e.kind == "token")
        row = {"set": case.set, "name": case.name, "split": case.split, "kind": case.kind,
               "question": case.question, "reply": reply, "expected": list(case.expected),
               "right": is_right(reply, case), "seconds": round(time.monotonic() - started, 2),
               "notes": [e.text for e in events if e.kind == "notice"]}
        results.append(row)
        if progress:
            progress(i + 1, len(chosen), row)
    return {"fusion": fusion, "image_fusion_active": media.image_fusion, "results": results,
            "summary": summarise(results)}


def summarise(results: Sequence[dict]) -> dict:
    """Right / asked, per set and split, and per set and kind."""
    out: dict = {}
    for row in results:
        for key in (f"{row['set']}/{row['split']}", f"{row['set']}/{row['split']}/{row['kind']}"):
            cell = out.setdefault(key, {"right": 0, "asked": 0})
            cell["asked"] += 1
            cell["right"] += int(row["right"])
    for cell in out.values():
        cell["rate"] = round(cell["right"] / cell["asked"], 3)
    return dict(sorted(out.items()))


def format_report(report: dict) -> str:
    lines = []
    for row in report["results"]:
        mark = "right" if row["right"] else "WRONG"
        lines += [f"[{mark}] {row['set']}/{row['name']} ({row['split']}): {row['question']}",
                  f"    expected: {' | '.join(row['expected'])}",
                  f"    reply: {' '.join(row['reply'].split())}"]
    fusion = "evidence + fusion tokens" if report["image_fusion_active"] else "evidence only"
    lines += ["", f"Summary ({fusion}):", f"  {'set/split/kind':40} {'right':>7}  rate"]
    lines += [f"  {key:40} {cell['right']:>3}/{cell['asked']:<3}  {100 * cell['rate']:.0f} %"
              for key, cell in report["summary"].items()]
    return "\n".join(lines)
