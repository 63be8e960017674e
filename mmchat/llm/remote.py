"""A chat model served elsewhere: llama.cpp's server, vLLM, Ollama or any engine that streams
OpenAI-compatible ``/v1/chat/completions`` as server-sent events.

It takes text only (the chat-completions API carries no embedding rows), so a turn's pictures and
voice reach it as their evidence in words; :func:`mmchat.media.media_encoder` says so in the chat.
Every fault is an :class:`MMChatError` a user can act on, raised from the stream, so the chat keeps
what was said before it, marked as failed. The API key comes from ``$MMCHAT_API_KEY`` or the system
keyring and lives in this object only: never in the settings, the logs, the model's name or the
conversation database. No torch here: a served chat loads nothing of a local runtime.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence

from mmchat.context import count_placeholders, fit_messages
from mmchat.errors import MMChatError
from mmchat.llm.config import GenerationConfig, GenerationStats, prompt_budget

log = logging.getLogger(__name__)

API_KEY_ENV = "MMCHAT_API_KEY"
TIMEOUT_ENV = "MMCHAT_SERVER_TIMEOUT"
KEYRING_SERVICE = "mmchat"  # keyring entry: this service, the server URL as typed for the user name
DEFAULT_TIMEOUT_S = 60.0  # the longest a server may stay silent (before or mid-reply) before mmchat gives up
CONNECT_TIMEOUT_S = 10.0
STOP_POLL_S = 0.05  # how soon Stop cuts a read that is waiting on a silent server
# The window assumed when the server does not say (vLLM does, as max_model_len; llama.cpp's and
# Ollama's /v1/models do not): the smallest default of the common servers' is 2048, the usual 4096.
DEFAULT_CONTEXT_TOKENS = 4096
# Fitting the chat counts tokens without the server's tokenizer: BPE vocabularies take about four
# characters of English per token, so three is a cautious estimate (trims a little early, never late).
CHARS_PER_TOKEN = 3
ERROR_BODY_CHARS = 300  # of a server's error answer, quoted in the message


class ServerError(MMChatError):
    """The chat server could not be reached or did not answer as an OpenAI-compatible server does.
    ``kind`` says which fault: "unreachable", "auth", "status", "timeout", "closed", "malformed"."""

    def __init__(self, kind: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


def normalise_url(url: str) -> str:
    """The server's root as mmchat uses it: ``http(s)://host[:port][/prefix]``, no trailing ``/v1``."""
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MMChatError(f"{url!r} is not a server address.", hint="Give it as http://host:port (e.g. http://127.0.0.1:8080).")
    path = parts.path[:-3] if parts.path.endswith("/v1") else parts.path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def api_key(url: str) -> str | None:
    """The API key for ``url``: ``$MMCHAT_API_KEY``, else the system keyring's entry, else none."""
    if key := os.environ.get(API_KEY_ENV, "").strip():
        return key
    try:
        import keyring

        return keyring.get_password(KEYRING_SERVICE, normalise_url(url)) or None
    except Exception as exc:  # no keyring package or no keyring service (a headless machine): no key
        log.debug("no keyring for the server's API key: %s", type(exc).__name__)
        return None


def store_api_key(url: str, key: str) -> None:
    """Keep ``key`` for ``url`` in the system keyring (``mmchat server key``)."""
    try:
        import keyring

        keyring.set_password(KEYRING_SERVICE, normalise_url(url), key)
    except Exception as exc:
        raise MMChatError(f"The system keyring did not take the key ({type(exc).__name__}).",
                          hint=f"Set ${API_KEY_ENV} in the environment instead.") from None


def default_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        return float(value) if value and float(value) > 0 else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


class RemoteLLM:
    """One model on an OpenAI-compatible server. :meth:`connect` asks the server which models it
    has (checking address and key); :meth:`stream` replies as the local runtimes do."""

    hidden_size = None  # no embedding rows go over the chat-completions API
    embed = None

    def __init__(self, url: str, model: str, *, key: str | None = None, timeout: float | None = None,
                 context_length: int = DEFAULT_CONTEXT_TOKENS) -> None:
        self.url = normalise_url(url)
        self.model = model
        self._key = key
        self.timeout = timeout or default_timeout()
        self.context_length = context_length
        self.last_stats: GenerationStats | None = None
        self._split = urllib.parse.urlsplit(self.url)
        # The served model's own name (llama.cpp's server names it by its file path), and where.
        self.name = f"{model.rstrip('/').rsplit('/', 1)[-1]} on {self._split.hostname}:{self._port}"

    @classmethod
    def connect(cls, url: str, *, model: str | None = None, timeout: float | None = None) -> RemoteLLM:
        """The server at ``url``, its model ``model`` (the first it lists when not given)."""
        probe = cls(url, model or "?", key=api_key(url), timeout=timeout)
        listed = probe._models()
        if model is None:
            if not listed:
                raise ServerError("malformed", f"The chat server at {probe.url} lists no models.",
                                  hint="Name one with --server-model (or in Settings).")
            model = listed[0]["id"]
        entry = next((m for m in listed if m.get("id") == model), {})
        context = entry.get("max_model_len") or entry.get("context_length") or DEFAULT_CONTEXT_TOKENS
        return cls(probe.url, model, key=probe._key, timeout=probe.timeout, context_length=int(context))

    # -- what the chat asks of a model -------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """An estimate (see :data:`CHARS_PER_TOKEN`): the server's tokenizer is not here."""
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def stream(self, messages: list[dict], *, config: GenerationConfig = GenerationConfig(),
               media: Sequence = (), stop: threading.Event | None = None) -> Iterator[str]:
        """Yield the reply to ``messages`` as the server streams it (text only: no ``media``)."""
        if not messages:
            raise ValueError("no messages to reply to")
        if media or count_placeholders(messages):
            raise ValueError("a chat server takes text only: media go to it as words (see mmchat.media)")
        fitted = fit_messages([{**m, "media": []} for m in messages], count_tokens=self.count_tokens,
                              max_prompt_tokens=prompt_budget(self.context_length, config))
        body = {"model": self.model, "stream": True, "max_tokens": config.max_new_tokens,
                "temperature": config.temperature, "top_p": config.top_p,
                "messages": [{"role": m["role"], "content": m["content"]} for m in fitted]}
        if config.seed is not None:
            body["seed"] = config.seed
        return self._run(body, dropped=len(messages) - len(fitted), stop=stop)

    def generate(self, messages: list[dict], *, config: GenerationConfig = GenerationConfig(),
                 media: Sequence = (), stop: threading.Event | None = None) -> str:
        return "".join(self.stream(messages, config=config, media=media, stop=stop))

    # -- the wire ----------------------------------------------------------------------------------
    @property
    def _port(self) -> int:
        return self._split.port or (443 if self._split.scheme == "https" else 80)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _open(self, method: str, path: str, body: dict | None = None) -> http.client.HTTPConnection:
        """A connection whose request was sent; reads on it wait at most :attr:`timeout`."""
        factory = http.client.HTTPSConnection if self._split.scheme == "https" else http.client.HTTPConnection
        connection = factory(self._split.hostname, self._port, timeout=min(CONNECT_TIMEOUT_S, self.timeout))
        try:
            connection.connect()
            connection.sock.settimeout(self.timeout)
            data = None if body is None else json.dumps(body).encode()
            connection.request(method, self._split.path + path, body=data, headers=self._headers())
        except ConnectionRefusedError:
            connection.close()
            raise ServerError("unreachable", f"Nothing answers at {self.url}: the chat server is not running there.",
                              hint="Start the server, or check the address in Settings (or --server).") from None
        except socket.gaierror:
            connection.close()
            raise ServerError("unreachable", f"The chat server's host {self._split.hostname} is not known.",
                              hint="Check the address in Settings (or --server).") from None
        except ssl.SSLError as exc:
            connection.close()
            raise ServerError("unreachable", f"The secure connection to {self.url} failed: {exc.reason}.") from None
        except (TimeoutError, OSError) as exc:
            connection.close()
            raise ServerError("unreachable", f"Could not connect to {self.url}: {exc.strerror or type(exc).__name__}.",
                              hint="Check the address and that the network reaches the server.") from None
        return connection

    def _response(self, connection: http.client.HTTPConnection) -> http.client.HTTPResponse:
        try:
            response = connection.getresponse()
        except TimeoutError:
            raise self._silent() from None
        except (http.client.HTTPException, OSError):
            raise ServerError("closed", f"The chat server at {self.url} closed the connection without answering.",
                              hint="Its log says why (it may have crashed).") from None
        if response.status != 200:
            raise self._status_error(response)
        return response

    def _status_error(self, response: http.client.HTTPResponse) -> ServerError:
        try:
            text = response.read(64 * 1024).decode("utf-8", "replace")
        except (http.client.HTTPException, OSError):
            text = ""
        said = _error_text(text)
        quoted = f": {said}" if said else ""
        if response.status in (401, 403):
            return ServerError("auth", f"The chat server at {self.url} refused the API key (HTTP {response.status}){quoted}.",
                               hint=f"Set ${API_KEY_ENV}, or keep the key in the system keyring: "
                                    f"mmchat server key {self.url}")
        return ServerError("status", f"The chat server at {self.url} answered HTTP {response.status} "
                                     f"{response.reason}{quoted}.")

    def _silent(self) -> ServerError:
        return ServerError("timeout", f"The chat server at {self.url} sent nothing for {self.timeout:g} s.",
                           hint=f"It may be overloaded; ${TIMEOUT_ENV} sets how long mmchat waits.")

    def _models(self) -> list[dict]:
        connection = self._open("GET", "/v1/models")
        try:
            response = self._response(connection)
            try:
                listed = json.loads(response.read(1 << 20))["data"]
                return [m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
            except (ValueError, KeyError, TypeError):
                raise ServerError("malformed", f"{self.url}/v1/models is not an OpenAI-compatible model list.",
                                  hint="The address is the server's root, e.g. http://127.0.0.1:8080.") from None
            except TimeoutError:
                raise self._silent() from None
        finally:
            connection.close()

    def _run(self, body: dict, *, dropped: int, stop: threading.Event | None) -> Iterator[str]:
        started = time.perf_counter()
        first = None
        state = {"generated": 0, "reason": "stopped"}
        connection = None
        try:
            connection = self._open("POST", "/v1/chat/completions", body)
            watch = _StopWatch(stop, connection.sock)
            try:
                response = self._response(connection)
                for text in self._events(response, state, stop):
                    first = first or time.perf_counter()
                    yield text
            finally:
                watch.close()
        finally:
            if connection is not None:
                connection.close()
            total = time.perf_counter() - started
            prefill = (first or time.perf_counter()) - started
            self.last_stats = GenerationStats(
                prompt_tokens=state.get("prompt_tokens", 0), reused_tokens=0, generated_tokens=state["generated"],
                dropped_messages=dropped, prefill_seconds=prefill, decode_seconds=max(total - prefill, 0.0),
                stop_reason=state["reason"])

    def _events(self, response: http.client.HTTPResponse, state: dict, stop: threading.Event | None) -> Iterator[str]:
        """The reply's text from the server-sent events, until ``[DONE]`` or a finish reason."""
        finished = False
        while True:
            if stop is not None and stop.is_set():
                state["reason"] = "stopped"
                return
            try:
                line = response.readline()
            except TimeoutError:
                raise self._silent() from None
            except (http.client.HTTPException, OSError):
                line = None
            if not line:
                if stop is not None and stop.is_set():
                    state["reason"] = "stopped"
                    return
                if finished:
                    return
                raise ServerError("closed", f"The chat server at {self.url} closed the connection mid-reply.",
                                  hint="Its log says why (it may have crashed or restarted).")
            line = line.strip()
            if not line or line.startswith((b":", b"event:", b"id:", b"retry:")):
                continue
            if not line.startswith(b"data:"):
                raise _malformed(self.url, line)
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            for text, reason in _chunk(self.url, data, state):
                if reason:
                    finished = True
                    state["reason"] = "length" if reason == "length" else "eos"
                if text:
                    state["generated"] += 1
                    yield text


class _StopWatch:
    """Shuts the connection's socket when ``stop`` is set, so that a read waiting on a silent server
    ends at once instead of after the timeout."""

    def __init__(self, stop: threading.Event | None, sock: socket.socket) -> None:
        self._done = threading.Event()
        if stop is not None:
            threading.Thread(target=self._watch, args=(stop, sock), name="mmchat-server-stop", daemon=True).start()

    def _watch(self, stop: threading.Event, sock: socket.socket) -> None:
        while not self._done.is_set():
            if stop.wait(STOP_POLL_S):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed
                    pass
                return

    def close(self) -> None:
        self._done.set()


def _chunk(url: str, data: bytes, state: dict) -> list[tuple[str, str | None]]:
    """(text, finish reason) of each choice in one streamed chunk."""
    try:
        event = json.loads(data)
        if "error" in event:  # vLLM and llama.cpp report a failure mid-stream as an event
            raise ServerError("status", f"The chat server at {url} failed mid-reply: {_error_text(json.dumps(event))}.")
        if usage := event.get("usage"):
            state["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
        out = []
        for choice in event["choices"]:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            if not isinstance(text, str):
                raise TypeError(text)
            out.append((text, choice.get("finish_reason")))
        return out
    except ServerError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _malformed(url, data) from None


def _malformed(url: str, line: bytes) -> ServerError:
    shown = line[:80].decode("utf-8", "replace")
    return ServerError("malformed", f"The chat server at {url} sent something that is not an OpenAI-compatible "
                                    f"stream: {shown!r}.", hint="Check that the address is an OpenAI-compatible server.")


def _error_text(text: str) -> str:
    """The message in a server's error answer (OpenAI's ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``) or the start of its text."""
    try:
        answer = json.loads(text)
        error = answer.get("error", answer.get("detail", answer)) if isinstance(answer, dict) else answer
        said = error.get("message", error) if isinstance(error, dict) else error
        text = said if isinstance(said, str) else json.dumps(said)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text if len(text) <= ERROR_BODY_CHARS else text[:ERROR_BODY_CHARS] + "…"

