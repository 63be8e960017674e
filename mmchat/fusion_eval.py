"""Evaluate a fusion checkpoint on held-out data: does the LLM use the media tokens?

Per modality: answer loss with the real features vs. shuffled features (each question paired with
another sample's media) vs. no features (the media group left out), and answer accuracy of greedy
replies through the same path the chat uses, against the no-features control and chance.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm import tqdm

from mmchat import fusion as fusion_mod
from mmchat.fusion_train import Example, _Batcher, answer_loss, media_tokens, user_turn

# Question kinds whose answers are scored by accuracy (short, closed answers).
SCORED_KINDS = {"image": ("colour", "shape", "count", "position"),
                "audio": ("transcript", "repeat", "colour_fact", "arithmetic", "sequence", "opposite", "fact")}
LOSS_BATCH = 8
ANSWER_WINDOW = 9  # words of a reply, beyond the answer's own, searched for the answer
REPLY_TOKENS = 14  # greedy tokens generated per scored question


# Spellings that say the same answer: American forms and digits map to the datasets' words.
SAME_WORD = {"center": "centre", "gray": "grey", "color": "colour", **{
    str(i): w for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}}


def normalise(text: str) -> list[str]:
    return [SAME_WORD.get(w, w) for w in re.findall(r"[a-z0-9]+", text.lower())]


def is_correct(reply: str, answer: str) -> bool:
    """The expected (one- or few-word) answer appears among the reply's first words (a full-sentence
    reply such as "The yellow triangle is located at the top" counts)."""
    want = normalise(answer)
    words = normalise(reply)[: len(want) + ANSWER_WINDOW]
    return bool(want) and any(words[i:i + len(want)] == want for i in range(len(words)))


@torch.no_grad()
def losses(llm, fusion, features, examples: Sequence[Example], *, system_prompt: str, seed: int = 0) -> dict:
    """Mean answer loss per modality for real / shuffled / no features."""
    batcher = _Batcher(llm, system_prompt)
    out: dict = {}
    for modality in fusion_mod.MODALITIES:
        pool = [e for e in examples if e.modality == modality]
        if not pool:
            continue
        sums = defaultdict(float)
        generator = torch.Generator().manual_seed(seed)
        for i in range(0, len(pool), LOSS_BATCH):
            batch = pool[i:i + LOSS_BATCH]
            real = media_tokens(fusion, features, batch)
            shuffled = media_tokens(fusion, features, batch, shuffle=generator)
            sums["real"] += float(answer_loss(llm, batcher, *real, batch)) * len(batch)
            sums["shuffled"] += float(answer_loss(llm, batcher, *shuffled, batch)) * len(batch)
            sums["none"] += float(answer_loss(llm, batcher, *real, batch, with_media=False)) * len(batch)
        out[modality] = {k: round(v / len(pool), 4) for k, v in sums.items()}
    return out


def all_heard(llm, example: Example, heard: set[int]) -> bool:
    """Whether every token of a clip's transcript was in some training transcript: a CTC read-out
    can only spell tokens it was trained on, so a request with an unheard word (the generated
    held-out split keeps some words to itself) cannot be read in full."""
    from mmchat.fusion_train import transcript_ids

    return bool(example.transcript) and all(t in heard for t in transcript_ids(llm, example.transcript))


@torch.no_grad()
def accuracy(llm, fusion, features, examples: Sequence[Example], *, system_prompt: str,
             limit_per_kind: int = 60, heard: set[int] | None = None) -> dict:
    """Greedy-reply accuracy per modality and kind, with media and without (control), plus chance.
    With ``heard`` (token ids of the training transcripts), each audio kind also reports the same
    for its requests whose every token was heard in training (``"heard"``)."""
    from mmchat.llm import GenerationConfig

    config = GenerationConfig(max_new_tokens=REPLY_TOKENS, temperature=0.0)
    picked: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for e in examples:
        if e.kind in SCORED_KINDS.get(e.modality, ()) and len(picked[e.modality, e.kind]) < limit_per_kind:
            picked[e.modality, e.kind].append(e)
    results: dict = {}
    total = sum(len(v) for v in picked.values())
    with tqdm(total=total, desc="evaluating answers", unit="q", file=sys.stderr, disable=None, leave=False) as bar:
        for (modality, kind), items in sorted(picked.items()):
            scores = []  # (heard, with media right, without media right) per question
            for e in items:
                tokens, mask = media_tokens(fusion, features, [e])
                rows = tokens[0][mask[0] > 0]
                chat = [{"role": "system", "content": system_prompt},
                        {"role": "user", "content": user_turn(modality, e.question)}]
                hit = is_correct(llm.generate(chat, config=config, media=[rows]), e.answer)
                chat[1]["content"] = user_turn(modality, e.question, with_media=False)
                control = is_correct(llm.generate(chat, config=config), e.answer)
                scores.append((heard is not None and all_heard(llm, e, heard), hit, control))
                bar.update(1)
            answers = {e.answer for e in items}
            row = results.setdefault(modality, {})[kind] = {
                **_rates(scores), "chance": round(1 / max(1, len(answers)), 4)}
            if heard is not None and modality == "audio":
                row["heard"] = _rates([s for s in scores if s[0]])
    return results


def _rates(scores: Sequence[tuple[bool, bool, bool]]) -> dict:
    n = len(scores)
    return {"n": n, "accuracy": round(sum(s[1] for s in scores) / max(1, n), 4),
            "no_media_accuracy": round(sum(s[2] for s in scores) / max(1, n), 4)}


def evaluate(llm, fusion, features, examples: Sequence[Example], *, system_prompt: str,
             limit_per_kind: int = 60, heard: set[int] | None = None) -> dict:
    """The held-out report; ``heard`` (token ids of the training transcripts) adds, for audio, the
    scores on requests whose every token was heard in training (see :func:`all_heard`)."""
    cfg = fusion.config
    token_counts = {"image": cfg.image_tokens,
                    "audio": cfg.audio_slots + 1 if cfg.whole("audio") else
                    f"1 per {cfg.audio_stack * 20} ms of speech, ≤ {cfg.max_audio_tokens} + 1"}
    clips = list({e.sample_id: e for e in examples if e.modality == "audio"}.values())
    if cfg.audio_collapse and clips:
        with torch.no_grad():
            live = sum(float(media_tokens(fusion, features, clips[i:i + LOSS_BATCH])[1].sum())
                       for i in range(0, len(clips), LOSS_BATCH))
        token_counts["audio"] = (f"1 per token read from the speech, ≤ {cfg.max_audio_tokens} + 1 "
                                 f"(mean {live / len(clips):.1f} here)")
    report = {
        "llm": llm.name,
        "weights": fusion.weights(),
        "tokens_per_item": token_counts,
        "loss": losses(llm, fusion, features, examples, system_prompt=system_prompt),
        "accuracy": accuracy(llm, fusion, features, examples, system_prompt=system_prompt,
                             limit_per_kind=limit_per_kind, heard=heard),
    }
    if cfg.audio_collapse:
        report["audio_readout"] = readout(llm, fusion, features, examples, heard=heard)
    return report


def readout(llm, fusion, features, examples: Sequence[Example], *, heard: set[int] | None = None) -> dict:
    """What a ``ctc_mlp`` projector reads from held-out clips, against their transcripts (the
    answers of ``transcript`` questions): clips read exactly, and token error rate (edits / tokens).
    With ``heard``, the same for the clips whose every token was heard in training (``"heard"``)."""
    from mmchat.fusion_train import _padded_frames, transcript_ids

    clips = [e for e in examples if e.modality == "audio" and e.kind == "transcript"]
    scores = []  # (every token heard, read exactly, edits, tokens) per clip
    for e in clips:
        read = fusion.heard(*_padded_frames(fusion, [features[e.sample_id].float()]))[0]
        want = transcript_ids(llm, e.answer)
        scores.append((heard is not None and all(t in heard for t in want), read == want,
                       _edit_distance(read, want), len(want)))
    out = _read_rates(scores)
    if heard is not None:
        out["heard"] = _read_rates([s for s in scores if s[0]])
    return out


def _read_rates(scores: Sequence[tuple[bool, bool, int, int]]) -> dict:
    return {"n": len(scores), "exact": round(sum(s[1] for s in scores) / max(1, len(scores)), 4),
            "token_error_rate": round(sum(s[2] for s in scores) / max(1, sum(s[3] for s in scores)), 4)}


def _edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def format_report(report: dict) -> str:
    lines = [f"fusion for {report['llm']}: weights {report['weights']}, tokens {report['tokens_per_item']}", "",
             "held-out answer loss   real   shuffled   no media"]
    for modality, v in report["loss"].items():
        lines.append(f"  {modality:20} {v['real']:6.3f}   {v['shuffled']:8.3f}   {v['none']:8.3f}")
    lines += ["", "held-out accuracy      with media   no media   chance    n"]
    for modality, kinds in report["accuracy"].items():
        for kind, v in kinds.items():
            lines.append(f"  {modality + ' ' + kind:20} {v['accuracy']:10.1%}   {v['no_media_accuracy']:8.1%}"
                         f"   {v['chance']:6.1%}  {v['n']:4}")
    audio = report["accuracy"].get("audio", {})
    if audio and all("heard" in v for v in audio.values()):
        lines += ["", "audio requests whose every token was heard in training   with media   no media    n"]
        for kind, v in audio.items():
            h = v["heard"]
            lines.append(f"  {kind:56} " + (f"{h['accuracy']:10.1%}   {h['no_media_accuracy']:8.1%}" if h["n"]
                                             else f"{'-':>10}   {'-':>8}") + f"  {h['n']:4} of {v['n']}")
    if "audio_readout" in report:
        r = report["audio_readout"]
        lines += ["", f"audio read-out of {r['n']} transcribed clips: {r['exact']:.1%} exact, "
                      f"token error rate {r['token_error_rate']:.1%}"]
        if r.get("heard", {}).get("n"):
            h = r["heard"]
            lines.append(f"  of the {h['n']} whose every token was heard in training: {h['exact']:.1%} exact, "
                         f"token error rate {h['token_error_rate']:.1%}")
    return "\n".join(lines)
