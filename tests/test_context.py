"""Context budgeting with a fake token counter (one token per word): fast and exact."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mmchat.context import (MEDIA_PLACEHOLDER, MIN_KEEP_TOKENS, TRUNCATION_MARKER, fit_messages,
                            truncate_middle)

OVERHEAD = 4  # per-message template tokens in these tests


def words(text: str) -> int:
    return len(text.split())


def cost(messages, media_rows: int = 0) -> int:
    text = sum(words(m["content"].replace(MEDIA_PLACEHOLDER, " ")) for m in messages)
    placeholders = sum(m["content"].count(MEDIA_PLACEHOLDER) for m in messages)
    return text + placeholders * media_rows + OVERHEAD * len(messages)


def fit(messages, budget, media_tokens=0):
    return fit_messages(messages, count_tokens=words, max_prompt_tokens=budget,
                        media_tokens=media_tokens, per_message_tokens=OVERHEAD)


def msg(role, n, tag=""):
    return {"role": role, "content": " ".join(f"{tag}w{i}" for i in range(n))}


def test_fitting_chat_is_returned_unchanged():
    chat = [msg("system", 5), msg("user", 5), msg("assistant", 5), msg("user", 5)]
    assert fit(chat, 100) == chat


def test_oldest_turns_are_dropped_in_pairs():
    chat = [msg("system", 5, "s"), msg("user", 10, "u1"), msg("assistant", 10, "a1"),
            msg("user", 10, "u2"), msg("assistant", 10, "a2"), msg("user", 10, "u3")]
    # everything costs 5+4 + 5*(10+4) = 79; without the first pair 51; without both 23
    assert fit(chat, 60) == [chat[0], *chat[3:]]
    assert fit(chat, 50) == [chat[0], chat[5]]
    assert fit(chat, 23) == [chat[0], chat[5]]


def test_system_messages_anywhere_are_kept():
    chat = [msg("user", 20, "u1"), msg("assistant", 20, "a1"), msg("system", 3, "memory"),
            msg("user", 20, "u2"), msg("assistant", 20, "a2"), msg("user", 5, "u3")]
    assert fit(chat, 20) == [chat[2], chat[5]]


def test_too_long_latest_message_is_cut_in_the_middle_with_a_marker():
    chat = [msg("system", 5, "s"), msg("user", 500, "u")]
    out = fit(chat, 60)
    assert out[0] == chat[0]
    content = out[1]["content"]
    assert TRUNCATION_MARKER in content
    assert content.startswith("uw0 uw1") and content.endswith("uw498 uw499")
    assert cost(out) <= 60
    assert cost(out) >= 55  # uses the room it has, not just a stub


def test_oldest_long_content_is_cut_first():
    chat = [msg("system", 300, "s"), msg("user", 40, "u")]
    out = fit(chat, 100)
    assert TRUNCATION_MARKER in out[0]["content"]
    assert out[1] == chat[1]
    assert cost(out) <= 100


def test_media_rows_count_and_placeholders_survive_truncation():
    long_text = " ".join(f"x{i}" for i in range(200))
    chat = [{"role": "user", "content": f"look {MEDIA_PLACEHOLDER} {long_text} {MEDIA_PLACEHOLDER} end"}]
    out = fit(chat, 60, media_tokens=[10, 20])
    assert out[0]["content"].count(MEDIA_PLACEHOLDER) == 2
    assert cost(out, 0) + 30 <= 60
    old = [{"role": "user", "content": f"{MEDIA_PLACEHOLDER} old"}, {"role": "assistant", "content": "ok"}]
    out = fit([*old, {"role": "user", "content": "new"}], 20, media_tokens=50)
    assert out == [{"role": "user", "content": "new"}]


def test_extra_keys_are_kept():
    chat = [{"role": "user", "content": "hi " * 100, "id": 7}]
    out = fit(chat, 30)
    assert out[0]["id"] == 7 and out[0]["content"] != chat[0]["content"]


def test_truncate_middle_keeps_placeholders_and_fits():
    text = f"{'a ' * 100}{MEDIA_PLACEHOLDER}{'b ' * 100}"
    cut = truncate_middle(text, max_tokens=20, count_tokens=words)
    assert cut.count(MEDIA_PLACEHOLDER) == 1
    assert sum(words(p) for p in cut.split(MEDIA_PLACEHOLDER)) <= 20


roles = st.sampled_from(["system", "user", "assistant"])
contents = st.lists(st.sampled_from(["alpha", "beta", "γάμμα", "日本", "x" * 30, MEDIA_PLACEHOLDER]),
                    max_size=80).map(" ".join)
chats = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(chat=chats, budget=st.integers(min_value=0, max_value=400), rows=st.integers(0, 8))
def test_fit_properties(chat, budget, rows):
    chat = [{**m, "index": i} for i, m in enumerate(chat)]
    out = fit(chat, budget, media_tokens=rows)
    indices = [m["index"] for m in out]
    assert indices == sorted(indices), "order preserved"
    last_user = max((m["index"] for m in chat if m["role"] == "user"), default=None)
    must_keep = {m["index"] for m in chat if m["role"] == "system"
                 or (last_user is not None and m["index"] >= last_user)}
    assert must_keep <= set(indices), "system messages and the latest user turn are kept"
    if cost(out, rows) > budget:  # then it is minimal: nothing droppable left, long texts cut
        assert set(indices) == must_keep
        for m in out:
            segments = chat[m["index"]]["content"].split(MEDIA_PLACEHOLDER)
            markers = sum(1 for p in segments if p.strip())  # a cut keeps one marker per text segment
            assert words(m["content"].replace(MEDIA_PLACEHOLDER, " ")) <= max(MIN_KEEP_TOKENS, markers)
    for m in out:
        assert m["content"].count(MEDIA_PLACEHOLDER) == chat[m["index"]]["content"].count(MEDIA_PLACEHOLDER)
