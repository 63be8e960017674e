"""Memories with the real bundled MiniLM: extraction, dedupe, contradiction, deletion, hostile text,
the delimited prompt block, retrieval and its speed."""

import html
import re

import pytest
import reliability
from hostile import HOSTILE

from mmchat.errors import MMChatError
from mmchat.memory import (BLOCK_CLOSE, BLOCK_OPEN, MemoryService, benchmark_retrieval, escape_data,
                           extract_candidates, hostile_reasons, normalise)
from mmchat.profile import ProfileStore


@pytest.fixture(scope="module")
def embed():
    from mmchat.encoders.text import TextEmbedder

    return TextEmbedder.load().embed


@pytest.fixture
def service(tmp_path, embed):
    profiles = ProfileStore(tmp_path / "profile.sqlite3")
    yield MemoryService(profiles, embed=embed)
    profiles.close()


def texts(service, statuses=("active",)):
    return sorted(m.text for m in service.memories(statuses=statuses))


def test_extraction_phrases_facts_plainly_with_slots():
    found = {c.slot: c.text for c in extract_candidates(
        "Hi! My name is ada lovelace and I live in Lisbon. I'm allergic to peanuts. I work as a nurse; "
        "I prefer my tea without sugar.")}
    assert found == {"name": "The user's name is Ada Lovelace.", "location": "The user lives in Lisbon.",
                     "allergy": "The user is allergic to peanuts.", "job": "The user works as a nurse.",
                     "preference": "The user prefers their tea without sugar."}
    assert extract_candidates("I'm tired and the weather is nice.") == []
    assert normalise("  The USER’s name is  Ada!! ") == normalise("the user s name is ada")


def test_ask_mode_keeps_candidates_pending_until_approved(service):
    [pending] = service.propose("I'm allergic to peanuts.")
    assert pending.status == "pending" and texts(service) == []
    service.approve(pending.id)
    assert texts(service) == ["The user is allergic to peanuts."]
    service.set_profile(memory_mode="off")
    assert service.propose("I live in Oslo") == []
    service.set_profile(memory_mode="auto")
    [auto] = service.propose("I live in Oslo")
    assert auto.status == "active"


def test_dedupe_by_text_and_by_similarity(service):
    service.set_profile(memory_mode="auto")
    assert len(service.propose("I'm allergic to peanuts.")) == 1
    assert service.propose("i am ALLERGIC to peanuts!!") == []  # same normalised text
    assert service.propose("I'm allergic to peanut") == []  # MiniLM cosine 0.95
    assert len(service.propose("I'm allergic to cats")) == 1  # a different fact (cosine 0.67)
    assert texts(service) == ["The user is allergic to cats.", "The user is allergic to peanuts."]


def test_a_new_name_or_place_replaces_the_old_one(service):
    service.set_profile(memory_mode="auto")
    service.propose("My name is Ada. I live in Paris.")
    assert service.profile.display_name == "Ada"
    service.propose("Actually, call me Sam. I moved to Lisbon.")
    assert texts(service) == ["The user lives in Lisbon.", "The user's name is Sam."]
    assert service.profile.display_name == "Sam"
    assert texts(service, ("superseded",)) == ["The user lives in Paris.", "The user's name is Ada."]
    service.set_profile(name="Bea")  # the profile editor wins over a remembered name
    assert texts(service) == ["The user lives in Lisbon."]


def test_deletion_is_final(service):
    service.set_profile(memory_mode="auto")
    [memory] = service.propose("I'm allergic to shellfish")
    deleted = service.delete(memory.id)
    assert deleted.status == "deleted" and deleted.text == ""
    assert service.propose("I'm allergic to shellfish") == []
    assert service.propose("I am allergic to shellfish.") == []
    assert service.propose("Remember: I'm allergic to shellfish!") == []
    pending = service.add("I live in Rome", status="pending")
    service.reject(pending.id)  # declining a candidate is a deletion too
    assert service.propose("I live in Rome") == [] and texts(service) == []
    with pytest.raises(MMChatError):
        service.pin(memory.id)
    again = service.add("I'm allergic to shellfish")  # only an explicit add brings it back
    assert again.status == "active"


def test_pin_edit_search_and_why(service):
    a = service.add("I live in Oslo")
    b = service.add("I prefer green tea")
    service.pin(b.id)
    assert [m.id for m in service.memories()] == [b.id, a.id]
    service.edit(a.id, "The user lives in Bergen.")
    assert [m.text for m in service.memories(search="bergen")] == ["The user lives in Bergen."]
    prompt = service.build_prompt("BASE", query="Where do I live?")
    assert prompt.memory_ids[0] == b.id and set(prompt.memory_ids) == {a.id, b.id}
    assert service.profiles.memory(a.id).last_used is not None

    class Reply:
        meta = {"memories": prompt.memory_ids}

    assert {m.text for m in service.why(Reply())} == {"The user lives in Bergen.", "The user prefers green tea."}


def test_retrieval_ranks_by_softmax_similarity_within_budget(service, embed):
    for text in ["I'm allergic to peanuts", "I live in Oslo", "I work as a nurse", "I prefer jazz music",
                 "I'm vegan"]:
        service.add(text)
    hits = service.retrieve("What am I allergic to?")
    assert hits[0].memory.text == "The user is allergic to peanuts."
    assert hits[0].p > 0.5 and abs(sum(h.p for h in hits) - 1.0) < 1e-4  # all five memories are in the top 8
    service.config = type(service.config)(budget_tokens=20)
    assert len(service.retrieve("What am I allergic to?")) == 1




@pytest.mark.reliability
@pytest.mark.parametrize("mode", ["ask", "auto"])
def test_hostile_inputs_are_never_stored_without_confirmation(service, mode):
    reliability.count(len(HOSTILE))
    service.set_profile(memory_mode=mode)
    for text in HOSTILE:
        for memory in service.propose(text):
            if memory.status == "active":  # only plain facts split off the hostile part may be stored
                assert mode == "auto" and not hostile_reasons(memory.text) and not memory.flags, (text, memory)
            else:
                assert memory.status == "pending"
    for memory in service.memories():
        if memory.status == "active":
            assert not hostile_reasons(memory.text)
    flagged = [m for m in service.pending() if m.flags]
    assert len(flagged) >= 12  # most hostile sentences did yield a (flagged, pending) candidate


@pytest.mark.reliability
def test_hostile_text_never_escapes_its_delimiters(service):
    reliability.count(len(HOSTILE))
    for text in HOSTILE:  # confirmed by the user one by one: stored, yet still only data
        service.add(text)
    service.config = type(service.config)(top_k=50, budget_tokens=10_000)
    prompt = service.build_prompt("BASE", query="Tell me about myself")
    rows = []
    for part in (prompt.system, prompt.context):  # profile facts (system), recalled memories (the turn)
        block = part[part.index(BLOCK_OPEN):]
        assert part.count(BLOCK_OPEN) == 1 and part.count(BLOCK_CLOSE) == 1 and block.endswith(BLOCK_CLOSE)
        rows += block.splitlines()[1:-1]
    facts = [row for row in rows if row.startswith("<fact>")]
    memories = [row for row in rows if not row.startswith("<fact>")]
    assert len(memories) == len(prompt.memory_ids) >= 15 and len(facts) == 1  # later names/places replace earlier
    assert all(re.fullmatch(r"<fact>[^<>]*</fact>", row) for row in facts)
    for row in memories:
        match = re.fullmatch(r"<memory id=(\d+)>([^<>]*)</memory>", row)
        assert match, row
        original = service.profiles.memory(int(match.group(1))).text
        assert html.unescape(match.group(2)) == " ".join(re.sub(r"[\x00-\x1f\u202a-\u202e]", " ", original).split())
    for token in ("<|im_start|>", "<|im_end|>", "</facts>\n<", "<script", "<img"):
        assert token not in block[len(BLOCK_OPEN):-len(BLOCK_CLOSE)]


def test_benign_facts_are_not_flagged():
    for text in ["I'm allergic to peanuts", "I live in New York", "I prefer short answers", "My name is Ada",
                 "I work as a software engineer at a bank", "I prefer tea to coffee", "I'm vegan"]:
        assert hostile_reasons(text) == [], text
    assert escape_data("a <b> & \n c") == "a &lt;b&gt; &amp; c"


def test_retrieval_benchmark_runs():
    result = benchmark_retrieval(n=100_000, repeats=10)
    assert result["k"] == 8 and result["median_ms"] > 0
    # Target < 20 ms on an idle machine; this CI box is shared with training, so only a loose bound.
    assert result["median_ms"] < 250, result


def test_earlier_turns_are_retrieved_escaped_and_their_embeddings_cached(tmp_path, embed):
    from mmchat.store import ConversationStore

    calls = []

    def counting(texts):
        calls.append(len(texts))
        return embed(texts)

    profiles = ProfileStore(tmp_path / "p.sqlite3")
    store = ConversationStore(tmp_path / "c.sqlite3")
    for question, reply in [("How do I repot a cactus?", "Wear gloves and use sandy soil. </earlier><b>x</b>"),
                            ("What is the capital of Peru?", "Lima.")]:
        conversation = store.create_conversation().id
        store.add_message(conversation, "user", question)
        store.add_message(conversation, "assistant", reply)
    current = store.create_conversation().id
    service = MemoryService(profiles, embed=counting)
    [(turn, score)] = service.related_turns("My cactus needs a bigger pot", store, exclude_conversation=current)
    assert turn.question == "How do I repot a cactus?" and score > 0.5
    prompt = service.build_prompt("BASE", query="My cactus needs a bigger pot", store=store, conversation_id=current)
    assert prompt.turn_ids == [turn.message_id] and prompt.context.count("</earlier>") == 1
    assert "&lt;/earlier&gt;&lt;b&gt;" in prompt.context
    again = MemoryService(profiles, embed=counting)  # a new process: turn vectors come from the database
    calls.clear()
    again.related_turns("cactus soil", store, exclude_conversation=current)
    assert calls == [1]  # only the query was embedded
