"""What the chat runtimes share: generation settings and statistics, fitting a chat into the
window, the chat template, media rows (already projected into the LLM's embedding space) between
text tokens, and the decoding loop, which checks a Stop flag every token and detokenises
incrementally, never yielding a broken character. A runtime gives the model's side: rendering,
token ids, prefill and one decoded token (:mod:`mmchat.llm.llamacpp`, :mod:`mmchat.llm.torch_runtime`).

Text goes through here as numpy (token ids, logits, sampling), so a text-only chat on llama.cpp never
imports torch (about a second of ``chat --once``); media rows are torch tensors, made by torch encoders.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmchat.context import MEDIA_PLACEHOLDER, count_placeholders, fit_messages
from mmchat.llm import MAX_CONTEXT_TOKENS, PREFILL_CHUNK_TOKENS  # noqa: F401  (the runtimes' limits)
from mmchat.llm.config import GenerationConfig, GenerationStats, prompt_budget

if TYPE_CHECKING:
    import torch

FIT_ATTEMPTS = 3  # re-fits when the rendered template costs more than estimated


@dataclass
class _Prompt:
    """A prompt as pieces (1-D int64 arrays of token ids, or 2-D tensors of media rows) and one
    comparable key per position."""

    pieces: list[np.ndarray | torch.Tensor]
    keys: list  # token id, or (media digest, row) for a media row
    dropped_messages: int

    @property
    def text_ids(self) -> list[int]:
        return [k for k in self.keys if isinstance(k, int)]


class ChatModel:
    """What every chat runtime shares: fitting a chat into the window, rendering its template and
    tokenising around media rows. A runtime sets :attr:`name`, :attr:`hidden_size`,
    :attr:`context_length` and :attr:`dtype`, and gives :meth:`_render`, :meth:`_ids` and :meth:`_run`."""

    name: str
    hidden_size: int
    context_length: int
    dtype: torch.dtype
    stop_ids: frozenset[int]
    last_stats: GenerationStats | None = None

    def _render(self, chat: list[dict]) -> str:
        """The chat template applied to ``chat``, ending with the assistant's turn opened."""
        raise NotImplementedError

    def _ids(self, text: str) -> list[int]:
        """Token ids of ``text``, special tokens written in it parsed as such, none added."""
        raise NotImplementedError

    def _run(self, prompt: _Prompt, *, config: GenerationConfig, stop: threading.Event | None) -> Iterator[str]:
        """Prefill and decode (a generator: nothing runs until the first ``next``)."""
        raise NotImplementedError

    def _forward_token(self, cache, token: int) -> np.ndarray:
        """The logits (float32) after feeding ``token`` at the next position."""
        raise NotImplementedError

    def _detokenizer(self):
        """A fresh incremental detokeniser (``push(token) -> str``, ``flush() -> str``)."""
        raise NotImplementedError

    def _is_stop(self, token: int) -> bool:
        return token in self.stop_ids

    def count_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (no special tokens added), as a 1-D int64 tensor."""
        import torch

        return torch.tensor(self._ids(text), dtype=torch.long)

    # ----------------------------------------------------------------- generation
    def stream(self, messages: list[dict], *, config: GenerationConfig = GenerationConfig(),
               media: Sequence[torch.Tensor] = (), stop: threading.Event | None = None) -> Iterator[str]:
        """Yield the reply to ``messages`` in text chunks as they are decoded.

        The i-th :data:`MEDIA_PLACEHOLDER` in the contents is replaced by the rows of ``media[i]``
        (``(k, hidden_size)``, in the embedding space). Too-long chats are fitted to the window.
        Setting ``stop`` ends generation before the next token.
        """
        if not messages:
            raise ValueError("no messages to reply to")
        media = [self._check_media(m) for m in media]
        if count_placeholders(messages) != len(media):
            raise ValueError(f"{count_placeholders(messages)} media placeholders but {len(media)} media tensors")
        prompt = self._build_prompt(messages, media, max_prompt_tokens=prompt_budget(self.context_length, config))
        return self._run(prompt, config=config, stop=stop)

    def generate(self, messages: list[dict], *, config: GenerationConfig = GenerationConfig(),
                 media: Sequence[torch.Tensor] = (), stop: threading.Event | None = None) -> str:
        """The whole reply as one string (see :meth:`stream`)."""
        return "".join(self.stream(messages, config=config, media=media, stop=stop))

    def _check_media(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.ndim != 2 or rows.shape[1] != self.hidden_size:
            raise ValueError(f"media must be (k, {self.hidden_size}) tensors, got {tuple(rows.shape)}")
        return rows.detach().to(device="cpu", dtype=self.dtype).contiguous()

    def _decode(self, cache, keys: list, logits: np.ndarray, *, prompt: _Prompt, config: GenerationConfig,
                stop: threading.Event | None, state: dict) -> Iterator[str]:
        """Sample, yield text, feed the token back (:meth:`_forward_token`, whose ``cache`` is the runtime's
        own); ``state`` records the count and why it ended."""
        sampler = _Sampler(config, prompt.text_ids)
        detok = self._detokenizer()
        room = max(self.context_length - len(prompt.keys), 1)
        limit = min(config.max_new_tokens, room)
        state["reason"] = "length" if limit == config.max_new_tokens else "context"
        generated = 0
        while generated < limit:
            if stop is not None and stop.is_set():
                state["reason"] = "stopped"
                break
            token = sampler.sample(logits)
            if self._is_stop(token):
                state["reason"] = "eos"
                break
            generated = state["generated"] = generated + 1
            if text := detok.push(token):
                yield text
            if generated < limit and not (stop is not None and stop.is_set()):
                logits = self._forward_token(cache, token)  # the last token needs no forward pass
                keys.append(token)
                sampler.observe(token)
        if text := detok.flush():
            yield text

    def _build_prompt(self, messages: list[dict], media: list[torch.Tensor], *, max_prompt_tokens: int) -> _Prompt:
        """Fit ``messages`` to the budget, render the chat template and tokenise around media."""
        annotated, start = [], 0
        for message in messages:
            n = str(message.get("content", "")).count(MEDIA_PLACEHOLDER)
            annotated.append({"role": message["role"], "content": str(message.get("content", "")),
                              "media": media[start:start + n]})
            start += n
        budget = max_prompt_tokens
        for _ in range(FIT_ATTEMPTS):
            fitted = fit_messages(annotated, count_tokens=self.count_tokens, max_prompt_tokens=budget,
                                  media_tokens=[len(m) for m in media])
            prompt = self._tokenize(fitted, dropped=len(messages) - len(fitted))
            overshoot = len(prompt.keys) - max_prompt_tokens
            if overshoot <= 0:
                break
            budget -= overshoot  # the template cost more than estimated: ask for less
        return prompt

    def _tokenize(self, fitted: list[dict], *, dropped: int) -> _Prompt:
        kept_media = [rows for m in fitted for rows in m["media"]]
        text = self._render([{"role": m["role"], "content": m["content"]} for m in fitted])
        segments = text.split(MEDIA_PLACEHOLDER)
        if len(segments) - 1 != len(kept_media):
            raise RuntimeError(f"the chat template of {self.name} changed the number of media placeholders")
        pieces, keys = [], []
        for i, segment in enumerate(segments):
            if segment:
                ids = self._ids(segment)
                pieces.append(np.asarray(ids, dtype=np.int64))
                keys.extend(ids)
            if i < len(kept_media):
                import torch  # loaded already: the media rows are its tensors

                rows = kept_media[i]
                digest = hashlib.blake2b(rows.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()
                pieces.append(rows)
                keys.extend((digest, r) for r in range(len(rows)))
        return _Prompt(pieces=pieces, keys=keys, dropped_messages=dropped)


class _Sampler:
    """Repetition penalty, then greedy or temperature / top-k / top-p sampling (numpy: the logits
    come from llama.cpp as an array; the torch runtime hands over a float32 copy)."""

    def __init__(self, config: GenerationConfig, prompt_ids: list[int]) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)  # None: fresh entropy
        self.seen = set(prompt_ids)
        self.seen_ids = np.array(sorted(self.seen), dtype=np.int64)

    def observe(self, token: int) -> None:
        if token not in self.seen:
            self.seen.add(token)
            self.seen_ids = np.append(self.seen_ids, token)

    def sample(self, logits: np.ndarray) -> int:
        """The next token; ``logits`` (the caller's own copy) is changed in place."""
        c = self.config
        if c.repetition_penalty != 1.0 and len(self.seen_ids):
            score = logits[self.seen_ids]
            logits[self.seen_ids] = np.where(score < 0, score * c.repetition_penalty, score / c.repetition_penalty)
        if c.temperature == 0:
            return int(logits.argmax())  # the first of equal maxima, as torch's argmax
        if 0 < c.top_k < logits.size:
            indices = np.argpartition(logits, -c.top_k)[-c.top_k:]
        else:
            indices = np.arange(logits.size)
        indices = indices[np.argsort(-logits[indices], kind="stable")]  # most likely first
        values = logits[indices].astype(np.float64) / c.temperature
        probs = np.exp(values - values[0])
        probs /= probs.sum()
        if c.top_p < 1.0:
            probs = probs * ((np.cumsum(probs) - probs) < c.top_p)  # always keeps the top token
            probs /= probs.sum()
        return int(indices[self.rng.choice(len(probs), p=probs)])
