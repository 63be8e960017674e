"""The chat-server backend (:mod:`mmchat.llm.remote`) against a raw HTTP client reading the same
stream. The stream is a real one, recorded from ``python -m llama_cpp.server`` on the bundled GGUF,
and replayed event by event by a small server in its own process, so that the two clients get the
same bytes at the same pace and only what they do with them differs."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchmarks.common import Result, Size

REPLY_TOKENS = 128
OVERHEAD_TARGET_MS = 10.0
SERVER_START_S = 120  # llama_cpp.server imports FastAPI and maps the model: seconds, more under load
QUESTION = "Write a short poem about the sea."

# Replays the recorded events (argv[1], one JSON list of byte strings) at /v1/chat/completions as a
# chunked event stream, one write per event as a streaming server sends them; lists one model.
REPLAY = r"""
import http.server, json, sys
events = [e.encode("latin-1") for e in json.load(open(sys.argv[1]))]

class Replay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"data": [{"id": "replay"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replay)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on a GGUF at 127.0.0.1 (llama-cpp-python's own OpenAI-compatible
    server), started and waited for; :meth:`close` ends it, even stopped (SIGSTOP) or killed."""

    def __init__(self, model_path, *, key: str | None = None, alias: str = "qwen-coder-0.5b",
                 n_ctx: int = 2048, threads: int = 1) -> None:
        port = free_port()
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", alias,
                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads)]
        if key:
            command += ["--api_key", key]
        self._log = tempfile.TemporaryFile()  # not a pipe: llama.cpp's loading chatter would fill one and block it
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        self._wait(key)

    def _wait(self, key: str | None) -> None:
        deadline = time.monotonic() + SERVER_START_S
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited: {self._log.read()[-2000:].decode(errors='replace')}")
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{self.url}/v1/models", headers=headers), timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError(f"llama_cpp.server did not answer within {SERVER_START_S} s")

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a test may have left it stopped
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _request(tokens: int) -> dict:
    return {"model": "any", "stream": True, "max_tokens": tokens, "temperature": 0, "top_p": 0.9,
            "messages": [{"role": "user", "content": QUESTION}]}


def record(url: str, tokens: int) -> list[bytes]:
    """The events (``data: ...`` blocks) of one streamed greedy reply, as sent."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(_request(tokens)),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read()
    connection.close()
    return re.findall(rb".+?(?:\r\n\r\n|\n\n)", text, re.S)


def _raw(port: int, body: bytes) -> int:
    """A raw HTTP client: post, read the stream to its end, nothing else."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    size = 0
    while chunk := response.read1(65536):
        size += len(chunk)
    connection.close()
    return size


def overhead(size: Size) -> list[Result]:
    from mmchat import registry
    from mmchat.llm.config import GenerationConfig
    from mmchat.llm.gguf import path as gguf_path
    from mmchat.llm.remote import RemoteLLM

    tokens = 16 if size.quick else REPLY_TOKENS
    server = LlamaServer(gguf_path(registry.default(registry.Role.LLM)))
    try:
        events = record(server.url, tokens)
    finally:
        server.close()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([e.decode("latin-1") for e in events], f)
    replay = subprocess.Popen([sys.executable, "-c", REPLAY, f.name], stdout=subprocess.PIPE, text=True)
    try:
        port = int(replay.stdout.readline())
        llm = RemoteLLM(f"http://127.0.0.1:{port}", "replay")
        config = GenerationConfig(temperature=0, max_new_tokens=tokens)
        body = json.dumps(_request(tokens)).encode()
        messages = [{"role": "user", "content": QUESTION}]

        def ours() -> float:
            started = time.perf_counter()
            text = "".join(llm.stream(messages, config=config))
            elapsed = time.perf_counter() - started
            replies.add(text)
            return elapsed

        def raw() -> float:
            started = time.perf_counter()
            _raw(port, body)
            return time.perf_counter() - started

        replies: set[str] = set()
        rounds = 3 if size.quick else 40
        ours_s, raw_s = [], []
        for i in range(rounds + 2):  # alternated; the first two rounds warm up
            a, b = (ours, raw) if i % 2 else (raw, ours)
            (ours_s if a is ours else raw_s).append(a())
            (ours_s if b is ours else raw_s).append(b())
    finally:
        replay.terminate()
        replay.wait()
        os.unlink(f.name)
    ours_med, raw_med = statistics.median(ours_s[2:]), statistics.median(raw_s[2:])
    generated = llm.last_stats.generated_tokens
    return [Result("chat server: ours over a raw HTTP client, per reply", (ours_med - raw_med) * 1000, "ms",
                   target=OVERHEAD_TARGET_MS,
                   detail={"ours_ms": round(ours_med * 1000, 2), "raw_ms": round(raw_med * 1000, 2),
                           "events": len(events), "text_chunks": generated, "rounds": rounds,
                           "replies_identical": len(replies) == 1, "reply": next(iter(replies))[:80]})]


def run(size: Size, *, engine=None) -> list[Result]:
    return overhead(size)
