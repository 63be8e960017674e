"""ChatSession end to end with the real default models: streaming, storage, stop, voice, images."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmchat.chat import ChatSession
from mmchat.errors import MMChatError
from mmchat.llm import GenerationConfig
from mmchat.store import ConversationStore

GREEDY = GenerationConfig(max_new_tokens=24, temperature=0.0)
PARIS = "What is the capital of France? Answer in one word."


def run(events):
    events = list(events)
    return events, "".join(e.text for e in events if e.kind == "token"), events[-1]


@pytest.fixture
def store(data_dir):
    s = ConversationStore()
    yield s
    s.close()


@pytest.mark.slow
def test_reply_streams_and_both_messages_are_stored(engine, store, data_dir):
    session = ChatSession(engine, store, generation=GREEDY)
    events, reply, done = run(session.send(PARIS))
    assert "Paris" in reply and any(e.kind == "token" for e in events)
    assert done.kind == "done" and done.message.status == "complete" and done.message.content == reply
    reopened = ConversationStore()
    [user, bot] = reopened.messages(session.conversation_id)
    assert (user.content, bot.content) == (PARIS, reply) and bot.meta["model"] == engine.model_name("llm")
    reopened.close()


@pytest.mark.slow
def test_stop_keeps_the_partial_reply(engine, store):
    session = ChatSession(engine, store, generation=GenerationConfig(max_new_tokens=200, temperature=0.0))
    stop = threading.Event()
    tokens = []
    for event in session.send("Count from one to one hundred in words.", stop=stop):
        if event.kind == "token":
            tokens.append(event.text)
            if len(tokens) == 3:
                stop.set()
        last = event
    assert last.kind == "done" and last.message.status == "stopped"
    assert len(tokens) <= 4 and last.message.content == "".join(tokens)
    assert session.history()[-1].status == "stopped"


@pytest.mark.slow
def test_regenerate_and_edit_and_resend(engine, store):
    session = ChatSession(engine, store, generation=GREEDY)
    run(session.send("What is the capital of Italy? Answer in one word."))
    _, again, _ = run(session.regenerate())
    assert "Rome" in again and [m.role for m in session.history()] == ["user", "assistant"]
    first_user = session.history()[0]
    _, edited, _ = run(session.edit_and_resend(first_user.id, PARIS))
    assert "Paris" in edited
    assert [m.content for m in session.history()][0] == PARIS and len(session.history()) == 2


@pytest.mark.slow
def test_temporary_chat_writes_nothing(engine, data_dir):
    session = ChatSession(engine, None, generation=GREEDY)
    _, reply, _ = run(session.send(PARIS))
    assert "Paris" in reply and len(session.history()) == 2
    assert not any(p.suffix.startswith(".sqlite") for p in data_dir.rglob("*")) if data_dir.exists() else True


@pytest.mark.slow
def test_voice_message_is_transcribed_and_answered(engine, store):
    from speech import synthesize

    session = ChatSession(engine, store, generation=GREEDY)
    audio = synthesize("What is the capital of France?")
    events, reply, done = run(session.send("", audio=audio))
    transcript = next(e.text for e in events if e.kind == "transcript")
    assert "capital of france" in transcript.lower()
    assert "Paris" in reply
    user = session.history()[0]
    assert user.content == transcript and [a.kind for a in user.attachments] == ["audio"]
    assert user.attachments[0].data[:4] == b"fLaC"


@pytest.mark.slow
def test_image_turn_is_stored_and_the_reply_names_the_colour(engine, store):
    """The default (pretrained) encoder: no "untrained" notice, and the evidence's colours reach the reply."""
    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse((60, 60, 160, 160), fill="red")
    session = ChatSession(engine, store, generation=GREEDY)
    events, reply, done = run(session.send("What colour is the shape?", images=[image]))
    assert not [e.text for e in events if e.kind == "notice"]
    assert "red" in reply.lower() and done.message.status == "complete"
    [attachment] = session.history()[0].attachments
    assert attachment.mime == "image/png" and Image.open(__import__("io").BytesIO(attachment.data)).size == (224, 224)


@pytest.mark.slow
def test_the_random_clip_says_it_is_untrained_and_names_nothing(store):
    """CLIP without fetched weights (a seeded random init) stays selectable: the turn says so, and its
    evidence has colours and text but no object names (a random init's would be noise)."""
    from mmchat.engine import Engine

    clip_engine = Engine(image="clip-vit-b-32")
    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse((60, 60, 160, 160), fill="red")
    session = ChatSession(clip_engine, store, generation=GREEDY)
    events, reply, done = run(session.send("What colour is the shape?", images=[image]))
    notices = [e.text for e in events if e.kind == "notice"]
    assert any("untrained" in n for n in notices)
    prompt, _, _ = session._prompt(session.history())
    assert "object classifier" not in prompt[1]["content"] and "red" in prompt[1]["content"]
    assert reply.strip() and done.message.status == "complete"


def test_pictures_reach_a_model_without_a_projector_as_words_and_the_turn_says_so_once(store):
    """A fetched 7B has no fusion projector (none is trained for it, nor can be: no torch copy): its
    image turns carry the evidence text and no fusion tokens, and the first one says so."""
    from mmchat.llm import MEDIA_PLACEHOLDER
    from mmchat_ui.demo import DemoEngine, DemoLLM

    llm = DemoLLM("A red disc.", name="qwen2.5-7b-instruct-q4")
    session = ChatSession(DemoEngine(llm), store, generation=GREEDY)
    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse((60, 60, 160, 160), fill="red")
    events, reply, _ = run(session.send("What colour is the shape?", images=[image]))
    [notice] = [e.text for e in events if e.kind == "notice"]
    assert "Pictures reach qwen2.5-7b-instruct-q4 as words only" in notice
    assert "no fusion projector is trained for it" in notice and "only for bundled models" in notice
    prompt = llm.prompts[-1][-1]["content"]
    assert "<image-data id=1>" in prompt and "red" in prompt and MEDIA_PLACEHOLDER not in prompt
    assert llm.media[-1] == [] and reply == "A red disc."
    events, _, _ = run(session.send("And its size?", images=[image.rotate(90)]))
    assert not [e for e in events if e.kind == "notice"]  # said once a session


@pytest.mark.slow
def test_a_bundled_model_without_a_projector_answers_from_the_evidence_and_says_how_to_train_one(engine, store):
    """SmolLM2-135M, the other bundled LLM, has no shipped fusion checkpoint: a real turn with a picture
    (the session's encoders shared, not loaded again)."""
    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse((60, 60, 160, 160), fill="red")
    session = ChatSession(engine.with_models(llm="smollm2-135m-instruct"), store, generation=GREEDY)
    events, reply, done = run(session.send("What colour is the shape?", images=[image]))
    notices = [e.text for e in events if e.kind == "notice"]
    assert any("Pictures reach smollm2-135m-instruct as words only" in n and "mmchat train-fusion --model smollm2-135m-instruct" in n
               for n in notices), notices
    prompt, media, _ = session._prompt(session.history())
    assert "red" in prompt[1]["content"] and media == []
    assert reply.strip() and done.message.status == "complete"


def test_bad_image_raises_before_anything_is_stored(store, tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_text("not an image")

    class NoModels:  # nothing may load for a turn that is rejected
        def __getattr__(self, name):
            raise AssertionError(f"model {name} was touched")

    session = ChatSession(NoModels(), store)
    with pytest.raises(MMChatError, match="fake.png"):
        list(session.send("look", images=[bad]))
    assert session.history() == []


def test_empty_message_is_refused(store):
    session = ChatSession(object(), store)
    with pytest.raises(MMChatError, match="empty"):
        list(session.send("   "))


@pytest.mark.slow
def test_cli_once_prints_the_reply_and_stores_it(data_dir):
    env = {**os.environ, "MMCHAT_DATA_DIR": str(data_dir)}
    result = subprocess.run([sys.executable, "-m", "mmchat.cli", "chat", "--once", PARIS, "--temperature", "0",
                             "--max-tokens", "16"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    history = subprocess.run([sys.executable, "-m", "mmchat.cli", "history"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert "What is the capital of France" in history.stdout
