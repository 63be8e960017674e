"""Context budgeting: make a chat fit the model's prompt window without ever failing.

:func:`fit_messages` keeps every system message and the latest user message (plus anything after
it), drops the oldest user/assistant turns first, and only when that is not enough cuts the middle
of long contents, marked with ``[…]``. Media placeholders are atomic: they are never cut and cost
their number of embedding rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MEDIA_PLACEHOLDER = "<|mmchat:media|>"
TRUNCATION_MARKER = "[…]"
MESSAGE_OVERHEAD_TOKENS = 8  # role header and end-of-turn tokens of one rendered message
MIN_KEEP_TOKENS = 16  # a truncated content keeps at least this much text (tokens)

CountTokens = Callable[[str], int]


def fit_messages(messages: Sequence[dict], *, count_tokens: CountTokens, max_prompt_tokens: int,
                 media_tokens: int | Sequence[int] = 0,
                 per_message_tokens: int = MESSAGE_OVERHEAD_TOKENS) -> list[dict]:
    """The messages that fit in ``max_prompt_tokens``, oldest turns dropped, long texts cut.

    ``media_tokens`` is the number of rows each :data:`MEDIA_PLACEHOLDER` stands for (one number
    for all, or one per occurrence in order). Returned dicts are copies of the input dicts with all
    their keys; only ``content`` may change. The result may still exceed the budget when the kept
    messages cannot be cut further ("minimal"); this function never raises on overflow.
    """
    costs = _media_costs(messages, media_tokens)
    budget = _Budget(count_tokens, per_message_tokens)
    items = [(i, dict(m), costs[i]) for i, m in enumerate(messages)]
    sizes = [budget.message(str(m.get("content", "")), cost) for _, m, cost in items]
    protected, groups = _split_protected(items)
    kept_groups = list(groups)
    total = sum(sizes)
    while total > max_prompt_tokens and kept_groups:
        total -= sum(sizes[i] for i, _, _ in kept_groups.pop(0))
    kept = sorted([*protected, *(it for g in kept_groups for it in g)], key=lambda it: it[0])
    if total > max_prompt_tokens:
        kept = _truncate_oldest_first(kept, budget, excess=total - max_prompt_tokens)
    return [message for _, message, _ in kept]


def count_placeholders(messages: Sequence[dict]) -> int:
    return sum(str(m.get("content", "")).count(MEDIA_PLACEHOLDER) for m in messages)


class _Budget:
    """Token costs of messages: text tokens + media rows + per-message template overhead."""

    def __init__(self, count_tokens: CountTokens, per_message_tokens: int) -> None:
        self.count_tokens = count_tokens
        self.per_message_tokens = per_message_tokens

    def text(self, content: str) -> int:
        return sum(self.count_tokens(part) for part in content.split(MEDIA_PLACEHOLDER) if part)

    def message(self, content: str, media_cost: int) -> int:
        return self.text(content) + media_cost + self.per_message_tokens


def _media_costs(messages: Sequence[dict], media_tokens: int | Sequence[int]) -> list[int]:
    """Media rows per message, from a per-placeholder count or list."""
    counts = [str(m.get("content", "")).count(MEDIA_PLACEHOLDER) for m in messages]
    if isinstance(media_tokens, int):
        return [n * media_tokens for n in counts]
    rows = list(media_tokens)
    if len(rows) != sum(counts):
        raise ValueError(f"{sum(counts)} media placeholders but {len(rows)} media_tokens entries")
    costs, start = [], 0
    for n in counts:
        costs.append(sum(rows[start:start + n]))
        start += n
    return costs


def _split_protected(items):
    """System messages and the latest user turn (protected) vs. older turns in droppable groups.

    A group is a user message with the assistant messages that follow it; assistant messages
    before the first user message form groups of their own.
    """
    last_user = max((k for k, (_, m, _) in enumerate(items) if m.get("role") == "user"), default=len(items))
    protected, groups = [], []
    for k, item in enumerate(items):
        role = item[1].get("role")
        if role == "system" or k >= last_user:
            protected.append(item)
        elif role == "user" or not groups or groups[-1][0][1].get("role") != "user":
            groups.append([item])
        else:
            groups[-1].append(item)
    return protected, groups


def _truncate_oldest_first(items, budget: _Budget, *, excess: int):
    """Cut the middle of long contents, oldest first, until ``excess`` tokens are gone."""
    out = []
    for index, message, cost in items:
        content = str(message.get("content", ""))
        current = budget.text(content)
        if excess > 0 and current > MIN_KEEP_TOKENS:
            target = max(MIN_KEEP_TOKENS, current - excess)
            content = truncate_middle(content, max_tokens=target, count_tokens=budget.count_tokens)
            excess -= current - budget.text(content)
            message = {**message, "content": content}
        out.append((index, message, cost))
    return out


def truncate_middle(content: str, *, max_tokens: int, count_tokens: CountTokens) -> str:
    """``content`` with the middle of each text segment cut and marked, to at most ``max_tokens``.

    Media placeholders are kept; the longest prefix/suffix that fits is found by bisection over
    the fraction of characters kept. Returns the marker alone (plus placeholders) if nothing fits.
    """
    parts = content.split(MEDIA_PLACEHOLDER)

    def cost(text: str) -> int:
        return sum(count_tokens(p) for p in text.split(MEDIA_PLACEHOLDER) if p)

    if cost(content) <= max_tokens:
        return content
    lo, hi = 0, max(len(p) for p in parts)  # characters kept per segment (at most)
    best = _cut(parts, 0)
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = _cut(parts, mid)
        if cost(candidate) <= max_tokens:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def _cut(parts: list[str], keep_chars: int) -> str:
    """Each segment longer than ``keep_chars`` keeps its head and tail around the marker."""
    cut = []
    for part in parts:
        if len(part) <= keep_chars:
            cut.append(part)
        else:
            head = part[:keep_chars - keep_chars // 2].rstrip()
            tail = part[len(part) - keep_chars // 2:].lstrip() if keep_chars // 2 else ""
            cut.append(" ".join(piece for piece in (head, TRUNCATION_MARKER, tail) if piece))
    return MEDIA_PLACEHOLDER.join(cut)
