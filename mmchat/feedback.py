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
