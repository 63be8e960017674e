"""Learning from 👍/👎 and corrections, and measuring that the next replies follow them.

:func:`learn` records a rating (and correction) on a reply and changes what later replies get:

* preferences stated in a correction update the profile at once — "too long" → short replies
  (instruction + a ``max_new_tokens`` cap), "answer in French" → language, "call me Sam" → name,
  "be more formal" → tone;
* anything else in a correction becomes a pinned memory (always in the prompt), pending instead
  when it reads like an instruction to the model (see :func:`mmchat.memory.hostile_reasons`);
* repeated 👎 on long replies without a correction shortens the reply-length preference a step.

:func:`evaluate_feedback` (``mmchat eval-feedback``) simulates a user giving such feedback and
measures the replies before and after.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from mmchat.errors import MMChatError
from mmchat.memory import MemoryService, extract_candidates, hostile_reasons
from mmchat.profile import FeedbackEvent, Memory
from mmchat.store import ConversationStore

LANGUAGES = ("English", "French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "Swedish", "Polish",
             "Chinese", "Japanese", "Korean", "Russian")
NATIVE_LANGUAGE_PHRASES = {"en français": "French", "auf deutsch": "German", "en español": "Spanish",
                           "in italiano": "Italian", "em português": "Portuguese"}
SHORTER = re.compile(r"\b(too long|too verbose|shorter|be (more )?(brief|concise)|less (text|detail|verbose)|"
                     r"keep it short|tl;?dr|fewer words)\b", re.IGNORECASE)
LONGER = re.compile(r"\b(too short|more detail(ed|s)?|longer|elaborate|more thorough)\b", re.IGNORECASE)
LANGUAGE = re.compile(r"\b(?:answer|reply|respond|speak|write|talk)(?: to me)?(?: only)? in (\w+)|\bin (\w+),? please\b",
                      re.IGNORECASE)
TONE = re.compile(r"\b(?:be|sound) (?:more |less )?(formal|casual|friendly|polite|direct|professional|warm)\b",
                  re.IGNORECASE)
LONG_REPLY_WORDS = 60  # a 👎 on a reply at least this long counts as "too long" when repeated
IMPLICIT_SIGNALS = 2  # that many such 👎 among the last three ratings shorten the replies a step
SHORTER_STEP = {"": "medium", "long": "medium", "medium": "short", "short": "short"}
MIN_CORRECTION_WORDS = 3  # shorter leftovers of a correction are not kept as a memory


@dataclass(frozen=True)
class FeedbackResult:
    event: FeedbackEvent
    changed: dict = field(default_factory=dict)  # profile fields set: {"language": "French"}
    memory: Memory | None = None  # the correction kept as a memory (pinned, or pending when flagged)


def parse_correction(text: str) -> tuple[dict, str]:
    """(profile preferences stated in ``text``, the rest of it)."""
    prefs: dict = {}
    rest = text
    if SHORTER.search(text):
        prefs["reply_length"] = "short"
    elif LONGER.search(text):
        prefs["reply_length"] = "long"
    rest = LONGER.sub(" ", SHORTER.sub(" ", rest))
    language = _language(text)
    if language:
        prefs["language"] = language
        rest = LANGUAGE.sub(" ", rest)
        for phrase in NATIVE_LANGUAGE_PHRASES:
            rest = re.sub(re.escape(phrase), " ", rest, flags=re.IGNORECASE)
    names = [c for c in extract_candidates(text) if c.slot == "name" and not c.flags]
    if names:
        prefs["display_name"] = names[-1].value
        rest = re.sub(r"\b(call me|my name is|my name's)\s+" + re.escape(names[-1].value), " ", rest, flags=re.I)
    tone = TONE.search(text)
    if tone:
        prefs["tone"] = tone.group(1).lower()
        rest = TONE.sub(" ", rest)
    rest = " ".join(rest.split()).strip(" .,!;:-")
    return prefs, rest


def _language(text: str) -> str | None:
    lowered = text.lower()
    for phrase, language in NATIVE_LANGUAGE_PHRASES.items():
        if phrase in lowered:
            return language
    for match in LANGUAGE.finditer(text):
        word = (match.group(1) or match.group(2)).capitalize()
        if word in LANGUAGES:
            return word
    return None


def learn(memory: MemoryService, store: ConversationStore, *, message_id: int, rating: int,
          correction: str | None = None) -> FeedbackResult:
    """Record feedback on the reply ``message_id`` and apply what it says (see the module doc)."""
    if rating not in (-1, 0, 1):
        raise MMChatError("A rating is +1 (good), -1 (bad) or 0 (no rating, a correction only).")
    message = store.message(message_id)
    if message is None or message.role != "assistant":
        raise MMChatError(f"There is no reply {message_id} to give feedback on.")
    correction = " ".join((correction or "").split()) or None
    if rating == 0 and correction is None:
        raise MMChatError("Give a rating, a correction, or both.")
    changed: dict = {}
    kept: Memory | None = None
    if correction:
        prefs, rest = parse_correction(correction)
        if prefs:
            memory.set_profile(**prefs)
            changed.update(prefs)
        if len(rest.split()) >= MIN_CORRECTION_WORDS or (rest and not prefs):
            kept = _correction_memory(memory, rest, source_message_id=message_id)
    words = len(message.content.split())
    if rating == -1 and not correction:
        changed.update(_implicit_length(memory, words=words))
    applied = {**changed, **({"memory": kept.id} if kept else {})}
    event = memory.profiles.add_feedback(memory.profile_id, message_id=message_id, rating=rating,
                                         correction=correction, words=words, applied=applied)
    store.update_meta(message_id, {"feedback": {"rating": rating, "correction": correction, "at": time.time()}})
    return FeedbackResult(event, changed, kept)


def _correction_memory(memory: MemoryService, text: str, *, source_message_id: int) -> Memory:
    flagged = bool(hostile_reasons(text))
    return memory.add(f"Correction from the user: {text}", pinned=not flagged, origin="correction",
                      status="pending" if flagged else "active", source_message_id=source_message_id)


def _implicit_length(memory: MemoryService, *, words: int) -> dict:
    """Shorten the reply-length preference after repeated 👎 on long replies."""
    if words < LONG_REPLY_WORDS:
        return {}
    recent = memory.profiles.feedback_events(memory.profile_id)[-2:]
    signals = 1 + sum(1 for e in recent if e.rating == -1 and not e.correction and e.words >= LONG_REPLY_WORDS)
    if signals < IMPLICIT_SIGNALS:
        return {}
    current = memory.profile.reply_length
    if SHORTER_STEP[current] == current:
        return {}
    memory.set_profile(reply_length=SHORTER_STEP[current])
    return {"reply_length": SHORTER_STEP[current]}


# -- evaluation ----------------------------------------------------------------------------------------
EVAL_QUESTIONS = ("Why is the sky blue?", "What does a compiler do?", "How do plants make food?",
                  "What is a good way to start learning to cook?", "Why do we have seasons?",
                  "What is the difference between a virus and a bacterium?")
WARMUP_QUESTION = "Tell me about the Moon."
SHORT_REPLY_WORDS = 40  # a reply "follows" the too-long feedback at or under this many words
FRENCH_STOPWORDS = frozenset("le la les un une des du de et est sont que qui pour dans sur avec pas ne vous nous "
                             "il elle ce cette ces au aux en par plus mais ou où son sa ses leur très être".split())
ENGLISH_STOPWORDS = frozenset("the a an and is are that which for in on with not you we it this these to of by "
                              "more but or its their very be as at from".split())


@dataclass(frozen=True)
class Scenario:
    name: str
    correction: str  # what the simulated user says after the warm-up reply
    metric: str  # "words" (lower is better) or a fraction (higher is better)


SCENARIOS = (Scenario("length", "too long", "words"), Scenario("french", "answer in French", "french"),
             Scenario("name", "call me Sam", "sam"))


def is_french(text: str) -> bool:
    """More French than English stop words (a crude but honest language detector)."""
    words = re.findall(r"[a-zàâçéèêëîïôûùüÿœ]+", text.lower())
    return sum(w in FRENCH_STOPWORDS for w in words) > sum(w in ENGLISH_STOPWORDS for w in words)


def measure(replies: list[str]) -> dict:
    words = [len(r.split()) for r in replies]
    n = max(len(replies), 1)
    return {"replies": len(replies), "mean_words": round(sum(words) / n, 1),
            "short_fraction": round(sum(w <= SHORT_REPLY_WORDS for w in words) / n, 3),
            "french_fraction": round(sum(is_french(r) for r in replies) / n, 3),
            "sam_fraction": round(sum("sam" in re.findall(r"\w+", r.lower()) for r in replies) / n, 3)}


def evaluate_feedback(engine, *, n: int = 3, max_new_tokens: int = 96, embed=None,
                      scenarios: tuple[Scenario, ...] = SCENARIOS) -> dict:
    """Replies to ``n`` questions with a fresh profile (the baseline) and one warm-up reply; then per
    scenario a profile whose history holds that warm-up reply, the simulated user's 👎 + correction
    on it, and the same ``n`` questions, each in a new conversation. Greedy decoding, in-memory
    stores: nothing is written to disk."""
    from mmchat.llm import GenerationConfig
    from mmchat.profile import ProfileStore

    if not 1 <= n <= len(EVAL_QUESTIONS):
        raise MMChatError(f"--n must be between 1 and {len(EVAL_QUESTIONS)}.")
    questions = EVAL_QUESTIONS[:n]
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    profiles = ProfileStore(":memory:")
    baseline_service = MemoryService(profiles, embed=embed)
    embed = embed or baseline_service.embed  # one embedder for every scenario
    baseline_replies = [_ask(engine, baseline_service, q, config) for q in questions]
    warmup = _ask(engine, baseline_service, WARMUP_QUESTION, config)
    report: dict = {"questions": list(questions), "max_new_tokens": max_new_tokens,
                    "baseline": measure(baseline_replies), "warmup_words": len(warmup.split()), "scenarios": {}}
    for scenario in scenarios:
        service = MemoryService(profiles, profile_id=profiles.create_profile(scenario.name).id, embed=embed)
        store = ConversationStore(":memory:", profile_id=service.profile_id)
        conversation = store.create_conversation().id
        store.add_message(conversation, "user", WARMUP_QUESTION)
        rated = store.add_message(conversation, "assistant", warmup)
        result = learn(service, store, message_id=rated.id, rating=-1, correction=scenario.correction)
        replies = [_ask(engine, service, q, config, store=store) for q in questions]
        after = measure(replies)
        report["scenarios"][scenario.name] = {"feedback": scenario.correction, "changed": result.changed,
                                              "after": after, "improved": _improved(scenario, report["baseline"], after),
                                              "examples": [r[:160] for r in replies[:2]]}
    report["baseline_examples"] = [r[:160] for r in baseline_replies[:2]]
    return report


def _ask(engine, service: MemoryService, question: str, config, *, store: ConversationStore | None = None) -> str:
    """The reply to ``question`` in a new conversation."""
    from mmchat.chat import ChatSession

    session = ChatSession(engine, store or ConversationStore(":memory:"), generation=config, memory=service)
    return [e for e in session.send(question) if e.kind == "done"][-1].text


def _improved(scenario: Scenario, before: dict, after: dict) -> bool:
    if scenario.metric == "words":
        return after["mean_words"] < before["mean_words"]
    key = f"{scenario.metric}_fraction"
    return after[key] > before[key]


def format_evaluation(report: dict) -> str:
    base = report["baseline"]
    lines = [f"{len(report['questions'])} questions, greedy, at most {report['max_new_tokens']} new tokens",
             f"{'':10} {'feedback':18} {'metric':16} {'before':>8} {'after':>8}  improved"]
    metric_keys = {"length": "mean_words", "french": "french_fraction", "name": "sam_fraction"}
    for name, result in report["scenarios"].items():
        key = metric_keys.get(name, "mean_words")
        lines.append(f"{name:10} {result['feedback']!r:18} {key:16} {base[key]:>8} {result['after'][key]:>8}  "
                     f"{'yes' if result['improved'] else 'NO'}")
    return "\n".join(lines)
