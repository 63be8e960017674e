"""Chat on an OpenAI-compatible server: a real one (`python -m llama_cpp.server`, llama-cpp-python's,
on the bundled GGUF) on 127.0.0.1, and its faults, each with a clear message, the partial reply kept
and marked, and nothing lost from the conversation: not running, killed mid-reply, stalled (SIGSTOP),
a refused key, an error status, a malformed stream. Stop cuts a reply, even one a server stalls."""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from benchmarks.remote import LlamaServer, free_port
from mmchat import registry
from mmchat.chat import ChatSession
from mmchat.context import MEDIA_PLACEHOLDER
from mmchat.engine import Engine
from mmchat.llm import GenerationConfig
from mmchat.llm.gguf import path as gguf_path
from mmchat.llm.remote import API_KEY_ENV, RemoteLLM, ServerError, api_key, store_api_key
from mmchat.store import ConversationStore

KEY = "test-key-4f1c9a"
GREEDY = GenerationConfig(temperature=0, max_new_tokens=48, seed=1)


def _start_server(*, key: str | None = KEY) -> LlamaServer:
    return LlamaServer(gguf_path(registry.default(registry.Role.LLM)), key=key)


@pytest.fixture(scope="module")
def server():
    running = _start_server()
    yield running.url
    running.close()


@pytest.fixture
def own_server():
    """A server this test may kill or stop."""
    running = _start_server()
    yield running.process, running.url
    running.close()


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)


def _session(url: str, **engine) -> ChatSession:
    return ChatSession(Engine(server=url, **engine), ConversationStore(":memory:"), generation=GREEDY)


def _send(session: ChatSession, text: str, *, stop=None) -> tuple[list, BaseException | None]:
    events = []
    try:
        for event in session.send(text, stop=stop):
            events.append(event)
            if stop is not None and event.kind == "token" and len(events) > 3:
                stop.set()
    except ServerError as exc:
        return events, exc
    return events, None


def test_a_reply_streams_from_the_server_and_is_stored(server, keyed):
    session = _session(server)
    events, error = _send(session, "What is the capital of France? One sentence.")
    assert error is None
    tokens = [e.text for e in events if e.kind == "token"]
    assert len(tokens) > 2 and "Paris" in "".join(tokens)  # streamed in pieces, not one block
    user, reply = session.history()
    assert (user.role, reply.role, reply.status) == ("user", "assistant", "complete")
    assert reply.content == "".join(tokens) and reply.meta["model"] == "qwen-coder-0.5b on 127.0.0.1:" + server.rsplit(":", 1)[1]
    assert session.engine.llm.last_stats.stop_reason == "eos"
    # The next turn carries the history: the server sees the earlier exchange.
    events, error = _send(session, "Which country did I ask about? Answer with the country only.")
    assert error is None and "France" in "".join(e.text for e in events if e.kind == "token")


def test_chat_once_on_a_server_keeps_the_key_out_of_the_database_and_output(server, tmp_path, data_dir):
    env = {**os.environ, API_KEY_ENV: KEY, "MMCHAT_DATA_DIR": str(data_dir)}
    result = subprocess.run([sys.executable, "-m", "mmchat.cli", "chat", "--server", server, "--once",
                             "What is 2 + 3? Answer with the number.", "--temperature", "0", "--max-tokens", "16"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "5" in result.stdout
    stored = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    assert b"What is 2 + 3" in stored  # the conversation was written (the database, maybe its WAL)
    assert KEY.encode() not in stored and KEY not in result.stdout + result.stderr


def test_a_refused_key_says_so_and_keeps_the_message(server, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "wrong-key")
    session = _session(server)
    events, error = _send(session, "Hello there")
    assert error.kind == "auth" and "401" in str(error) and "wrong-key" not in str(error)
    assert "mmchat server key" in str(error)
    assert session.engine.status()["llm"].state == "error"
    assert [m.content for m in session.history()] == ["Hello there"]
    # Once the key is right, the same engine connects: a failed connection is not remembered.
    monkeypatch.setenv(API_KEY_ENV, KEY)
    events, error = _send(session, "Say hello.")
    assert error is None and session.history()[-1].status == "complete"


def test_no_server_running_is_said_and_loses_nothing(monkeypatch, keyed):
    url = f"http://127.0.0.1:{free_port()}"
    store = ConversationStore(":memory:")
    session = ChatSession(Engine(server=url), store, generation=GREEDY)
    events, error = _send(session, "Hello there")
    assert isinstance(error, ServerError) and error.kind == "unreachable"
    assert "not running" in str(error) and url in str(error)
    [user] = session.history()  # the message is kept, to resend when the server is up
    assert user.content == "Hello there"


def test_a_server_killed_mid_reply_keeps_the_partial_reply_marked(own_server, keyed):
    process, url = own_server
    session = _session(url)
    events = []
    with pytest.raises(ServerError) as caught:
        for event in session.send("Write a long story about a lighthouse keeper."):
            events.append(event)
            if sum(e.kind == "token" for e in events) == 5:
                process.kill()
    assert caught.value.kind == "closed" and "mid-reply" in str(caught.value)
    said = "".join(e.text for e in events if e.kind == "token")
    user, partial = session.history()
    assert user.content.startswith("Write a long story")
    assert partial.status == "error" and partial.content == said and len(said) > 0
    # With the server gone, the next turn says it is not running, and the history stays.
    process.wait()
    events, error = _send(session, "Are you there?")
    assert error.kind == "unreachable" and len(session.history()) == 3


def test_a_stalled_server_times_out_with_the_partial_reply_kept(own_server, keyed, monkeypatch):
    process, url = own_server
    monkeypatch.setenv("MMCHAT_SERVER_TIMEOUT", "4")  # room for the first tokens on a loaded machine
    session = _session(url)
    events = []
    started = None
    with pytest.raises(ServerError) as caught:
        for event in session.send("Count from one to fifty in words."):
            events.append(event)
            if sum(e.kind == "token" for e in events) == 3:
                os.kill(process.pid, signal.SIGSTOP)  # alive, connection open, silent
                started = time.monotonic()
    waited = time.monotonic() - started
    os.kill(process.pid, signal.SIGCONT)
    assert started is not None, "the server timed out before it was stopped"
    assert caught.value.kind == "timeout" and "4 s" in str(caught.value)
    assert 3.5 < waited < 15
    _user, partial = session.history()
    assert partial.status == "error" and partial.content == "".join(e.text for e in events if e.kind == "token")


def test_stop_cuts_a_reply_at_once_even_while_the_server_is_silent(own_server, keyed):
    process, url = own_server
    llm = RemoteLLM.connect(url)  # the default timeout: a minute
    stop = threading.Event()
    reply = llm.stream([{"role": "user", "content": "Count from one to fifty in words."}], config=GREEDY, stop=stop)
    got = [next(reply), next(reply)]
    os.kill(process.pid, signal.SIGSTOP)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    got += list(reply)
    assert time.monotonic() - started < 3  # not the minute's timeout
    assert llm.last_stats.stop_reason == "stopped" and llm.last_stats.generated_tokens == len([t for t in got if t])
    os.kill(process.pid, signal.SIGCONT)


def test_a_stopped_reply_is_stored_as_stopped(server, keyed):
    session = _session(server)
    events, error = _send(session, "Tell me about the history of Rome.", stop=threading.Event())
    assert error is None
    done = events[-1]
    assert done.kind == "done" and done.message.status == "stopped"
    assert 0 < len(done.text) and session.history()[-1].content == done.text


class _Fake(http.server.BaseHTTPRequestHandler):
    """A server that answers the model list, then whatever the test set as ``reply``."""

    reply: tuple[int, str, bytes] = (200, "text/event-stream", b"")
    requests: list = []  # the bodies posted

    def do_GET(self):  # noqa: N802
        self._answer(200, "application/json", json.dumps({"data": [{"id": "fake"}]}).encode())

    def do_POST(self):  # noqa: N802
        type(self).requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._answer(*type(self).reply)

    def _answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake():
    handler = type("Handler", (_Fake,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _event(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n"


@pytest.mark.parametrize("reply, kind, said", [
    ((500, "application/json", b'{"error": {"message": "CUDA out of memory"}}'), "status", "HTTP 500"),
    ((200, "text/event-stream", _event("Hel") + _event("lo") + b"data: {not json\n\n"), "malformed", "not an OpenAI"),
    ((200, "text/html", _event("Hi") + b"<html>proxy error</html>\n"), "malformed", "<html>"),
    ((200, "text/event-stream", _event("Hel") + b'data: {"error": {"message": "engine died"}}\n\n'), "status",
     "engine died"),
])
def test_server_faults_are_said_with_the_partial_reply_kept(fake, reply, kind, said):
    handler, url = fake
    handler.reply = reply
    session = _session(url)
    events, error = _send(session, "Hello")
    assert isinstance(error, ServerError) and error.kind == kind and said in str(error), error
    if reply[0] == 500:
        assert "CUDA out of memory" in str(error) and len(session.history()) == 1
    else:
        _user, partial = session.history()
        assert partial.status == "error" and partial.content.startswith("H")


def test_a_stream_without_done_after_a_finish_reason_is_complete(fake):
    handler, url = fake
    finish = b'data: {"choices": [{"delta": {}, "finish_reason": "length"}]}\n\n'
    handler.reply = (200, "text/event-stream", _event("One") + _event(" two") + finish)
    session = _session(url)
    events, error = _send(session, "Hello")
    assert error is None and session.history()[-1].content == "One two"
    assert session.engine.llm.last_stats.stop_reason == "length"


def test_a_long_conversation_is_trimmed_with_a_visible_note(fake):
    handler, url = fake
    handler.reply = (200, "text/event-stream", _event("ok") + b"data: [DONE]\n\n")
    session = _session(url)
    session.engine.llm.context_length = 1024  # the fake server's window
    for i in range(12):
        events, error = _send(session, f"Message {i}: " + "lorem ipsum dolor sit amet " * 30)
        assert error is None
    notes = [e.text for e in events if e.kind == "notice"]
    assert notes and "oldest messages were left out" in notes[0], notes
    assert session.engine.llm.last_stats.dropped_messages > 0
    assert len(session.history()) == 24  # left out of the prompt, not of the conversation


def test_the_api_key_comes_from_the_keyring_when_the_environment_has_none(monkeypatch):
    import keyring
    from keyring.backend import KeyringBackend

    class Memory(KeyringBackend):
        priority = 1
        stored: dict = {}

        def get_password(self, service, username):
            return self.stored.get((service, username))

        def set_password(self, service, username, password):
            self.stored[(service, username)] = password

        def delete_password(self, service, username):
            self.stored.pop((service, username), None)

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(Memory())
    try:
        assert api_key("http://10.0.0.5:8000") is None
        store_api_key("10.0.0.5:8000/v1/", "from-keyring")  # the same server, typed differently
        assert api_key("http://10.0.0.5:8000") == "from-keyring"
        monkeypatch.setenv(API_KEY_ENV, "from-env")
        assert api_key("http://10.0.0.5:8000") == "from-env"
    finally:
        keyring.set_keyring(previous)


def test_a_picture_reaches_a_server_as_words_and_the_chat_says_so(fake):
    from skimage import data
    from PIL import Image

    handler, url = fake
    handler.reply = (200, "text/event-stream", _event("A cat.") + b"data: [DONE]\n\n")
    session = _session(url)
    events = list(session.send("What animal is this?", images=[Image.fromarray(data.chelsea())]))
    notes = [e.text for e in events if e.kind == "notice"]
    assert any("as words only" in n and "chat server" in n for n in notes), notes
    prompt = handler.requests[-1]["messages"][-1]["content"]
    assert "cat" in prompt.lower() and "What animal is this?" in prompt  # the encoder's evidence, in words
    assert MEDIA_PLACEHOLDER not in prompt  # no media slot went over the wire
    assert session.history()[-1].content == "A cat."
