"""The chat runtime on llama.cpp (llama-cpp-python): the GGUF as shipped, memory-mapped, quantised.

Measured with bare llama-cpp-python on the 2-core test machine, default Qwen2.5-Coder-0.5B Q4_K_M:
46 tokens/s where the torch runtime, on a de-quantised copy, does 23; 0.66 GB resident instead of
1.74 GB; no one-time conversion. The torch runtime (:mod:`mmchat.llm.torch_runtime`) stays for
fusion training, which needs gradients through the model.

The decoding loop is :class:`~mmchat.llm.base.ChatModel`'s, shared with the torch runtime: the prompt
goes to ``llama_decode`` in batches of token ids, and media rows (already in the embedding space)
in batches of embeddings (``llama_batch_init(n, n_embd, 1)``), each at its own positions; the KV
cache keeps the previous call's positions and is cut back to the prefix the new prompt shares.
``llama_decode`` runs without the GIL (ctypes releases it), so the GUI thread keeps running.
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmchat import probe, registry
from mmchat.cache import Progress
from mmchat.errors import MMChatError
from mmchat.llm import gguf
from mmchat.llm.base import (MAX_CONTEXT_TOKENS, PREFILL_CHUNK_TOKENS, ChatModel, GenerationConfig, GenerationStats,
                             _Prompt)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class LlamaCppLLM(ChatModel):
    """A GGUF chat model run by llama.cpp. Use :meth:`load`. One generation runs at a time (they
    share the KV cache); a second waits for the first to end."""

    def __init__(self, *, name: str, llama, path: Path, threads: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.name = name
        self.path = path
        self.threads = threads
        # With threads not chosen by the user, each reply runs on the CPUs others leave free (down to
        # one): on 2 cores beside one busy process, 2 threads decoded 10-12 tokens/s and 1 thread 19-22,
        # as llama.cpp's threads wait on each other at every step and one of them keeps losing its core.
        self.adapt_threads = False
        self.active_threads = threads
        self._others = probe.OthersCpu()
        self._llama = llama  # owns the model and the context: they live as long as it does
        self._ctx = llama.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.hidden_size: int = llama_cpp.llama_model_n_embd(llama.model)
        self.n_vocab: int = llama.n_vocab()
        # The window it was trained for, if smaller than the context made for it (MAX_CONTEXT_TOKENS).
        self.context_length: int = min(llama.n_ctx(), llama_cpp.llama_model_n_ctx_train(llama.model))
        self.last_stats: GenerationStats | None = None
        special = {key: llama.detokenize([token], special=True).decode("utf-8", "replace")
                   for key, token in (("bos_token", llama.token_bos()), ("eos_token", llama.token_eos()))
                   if token >= 0}
        self._template = _ChatTemplate(llama.metadata, name=name, special=special)
        self._lock = threading.Lock()
        self._keys: list = []  # what the KV cache holds, position by position (as _Prompt.keys)
        self._token_batch = _Batch(llama_cpp, PREFILL_CHUNK_TOKENS, 0)
        self._embed_batch = _Batch(llama_cpp, PREFILL_CHUNK_TOKENS, self.hidden_size)

    @classmethod
    def load(cls, name: str | None = None, *, threads: int | None = None,
             progress: Progress | None = None) -> LlamaCppLLM:
        """Load a registry GGUF model (default: the registry's default LLM); one opened ahead
        (:func:`mmchat.llm.gguf.open_ahead`) with these threads is taken as it is."""
        spec = registry.get(name) if name else registry.default(registry.Role.LLM)
        if spec.role is not registry.Role.LLM:
            raise MMChatError(f"{spec.name} is not a language model.")
        threads = threads or probe.physical_cores()
        opened = gguf.take_opened(spec.name, threads=threads)
        if opened is not None:
            path, llama = opened
            return cls(name=spec.name, llama=llama, path=path, threads=threads)
        return cls.from_file(gguf.path(spec, progress=progress), name=spec.name, threads=threads,
                             hint=gguf.repair_hint(spec))

    @classmethod
    def from_file(cls, path: Path, *, name: str | None = None, threads: int | None = None,
                  hint: str = gguf.REINSTALL_HINT) -> LlamaCppLLM:
        """``path`` opened in llama.cpp; ``hint`` says what to do if it cannot be."""
        threads = threads or probe.physical_cores()
        started = time.perf_counter()
        llama = gguf.open_llama(path, threads=threads, hint=hint)
        log.info("loaded %s on llama.cpp (%d threads) in %.1f s", path, threads, time.perf_counter() - started)
        return cls(name=name or path.stem, llama=llama, path=path, threads=threads)

    # ----------------------------------------------------------------- tokens and embeddings
    def _ids(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []

    def _render(self, chat: list[dict]) -> str:
        return self._template.render(chat)

    @functools.cached_property
    def _embedding(self) -> _TokenEmbedding:
        return _TokenEmbedding(self.path)

    @property
    def dtype(self) -> torch.dtype:
        """What llama.cpp takes embedding rows in (torch's: media rows are torch tensors)."""
        import torch

        return torch.float32

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``token_ids`` (any shape) -> ``(*shape, hidden_size)``: the GGUF's rows,
        de-quantised as llama.cpp does it for its first layer."""
        return self._embedding.rows(token_ids)

    @functools.cached_property
    def stop_ids(self) -> frozenset[int]:
        """Every end-of-generation token (a scan of the vocabulary: 0.1 s, done on first use)."""
        return frozenset(t for t in range(self.n_vocab) if self._lib.llama_vocab_is_eog(self._vocab, t))

    def _is_stop(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def _detokenizer(self) -> _Detokenizer:
        return _Detokenizer(self._lib, self._vocab)

    def reset_cache(self) -> None:
        """Forget the KV cache (the next call prefills its whole prompt)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self._keys = []

    # ----------------------------------------------------------------- generation
    def _fit_threads(self) -> None:
        """Threads for this reply: :attr:`threads`, less the CPUs other processes used since the last."""
        busy = self._others.reading() if self.adapt_threads else None
        if busy is None:
            return
        free = len(os.sched_getaffinity(0)) - busy
        wanted = max(1, min(self.threads, int(free + 0.5)))
        if wanted != self.active_threads:
            self._lib.llama_set_n_threads(self._ctx, wanted, wanted)
            log.info("llama.cpp on %d of %d threads: other processes kept %.1f CPUs busy", wanted, self.threads, busy)
            self.active_threads = wanted

    def _run(self, prompt: _Prompt, *, config: GenerationConfig, stop: threading.Event | None) -> Iterator[str]:
        with self._lock:
            self._fit_threads()
            reused = self._reuse(prompt.keys)
            state = {"generated": 0, "reason": "stopped"}
            started = time.perf_counter()
            prefill_s = 0.0
            try:
                logits = self._prefill(prompt, stop=stop)
                prefill_s = time.perf_counter() - started
                if logits is not None:
                    yield from self._decode(None, self._keys, logits, prompt=prompt, config=config, stop=stop,
                                            state=state)
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit):  # failed mid-decode: trust nothing in the cache
                    self._clear()
                raise
            finally:
                if self.adapt_threads:
                    self._others.reading()  # the next reply sees what others did after this one
                total = time.perf_counter() - started
                self.last_stats = GenerationStats(
                    prompt_tokens=len(prompt.keys), reused_tokens=reused, generated_tokens=state["generated"],
                    dropped_messages=prompt.dropped_messages, prefill_seconds=prefill_s,
                    decode_seconds=max(total - prefill_s, 0.0), stop_reason=state["reason"])

    def _reuse(self, keys: list) -> int:
        """Cut the KV cache back to the prefix it shares with ``keys`` (leaving at least one position
        to run, whose logits start the reply); the positions kept."""
        common, limit = 0, min(len(self._keys), len(keys) - 1)
        while common < limit and self._keys[common] == keys[common]:
            common += 1
        if common < len(self._keys):
            memory = self._lib.llama_get_memory(self._ctx)
            if not self._lib.llama_memory_seq_rm(memory, 0, common, -1):
                self._clear()
                return 0
            del self._keys[common:]
        return common

    def _prefill(self, prompt: _Prompt, *, stop: threading.Event | None) -> np.ndarray | None:
        """Run the prompt positions not yet in the cache; the last one's logits, or None if stopped."""
        start, position = len(self._keys), 0
        for piece in prompt.pieces:
            end = position + len(piece)
            for begin in range(max(start, position), end, PREFILL_CHUNK_TOKENS):
                if stop is not None and stop.is_set():
                    return None
                chunk = piece[begin - position:min(begin - position + PREFILL_CHUNK_TOKENS, len(piece))]
                self._run_batch(chunk, first=begin, logits=begin + len(chunk) == len(prompt.keys))
                self._keys.extend(prompt.keys[begin:begin + len(chunk)])
            position = end
        return self._logits()

    def _forward_token(self, cache, token: int) -> np.ndarray:
        del cache  # the context's own
        self._run_batch(np.array([token], dtype=np.int64), first=len(self._keys), logits=True)
        return self._logits()

    def _run_batch(self, chunk: np.ndarray | torch.Tensor, *, first: int, logits: bool) -> None:
        """Token ids (a 1-D array) or media rows (a 2-D float32 tensor) at positions ``first...``."""
        if chunk.ndim == 1:
            self._token_batch.fill(chunk, first=first, logits=logits)
            batch = self._token_batch
        else:
            self._embed_batch.fill(chunk.numpy(), first=first, logits=logits)
            batch = self._embed_batch
        status = self._lib.llama_decode(self._ctx, batch.batch)
        if status != 0:  # 1: no room in the KV cache; <0: an error
            raise MMChatError(f"llama.cpp could not run the prompt (llama_decode returned {status}).",
                              hint="Start a new chat; if it happens again, report it with the log.")

    def _logits(self) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()


class _Batch:
    """One reusable ``llama_batch`` for sequence 0: token ids (``width`` 0) or embedding rows."""

    def __init__(self, lib, capacity: int, width: int) -> None:
        self.batch = lib.llama_batch_init(capacity, width, 1)
        self._free = functools.partial(lib.llama_batch_free, self.batch)
        self.pos = np.ctypeslib.as_array(self.batch.pos, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(ctypes.cast(self.batch.logits, ctypes.POINTER(ctypes.c_int8)),
                                            shape=(capacity,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(capacity,))[:] = 1
        for i in range(capacity):
            self.batch.seq_id[i][0] = 0
        if width:
            self.values = np.ctypeslib.as_array(self.batch.embd, shape=(capacity, width))
        else:
            self.values = np.ctypeslib.as_array(self.batch.token, shape=(capacity,))

    def fill(self, values: np.ndarray, *, first: int, logits: bool) -> None:
        n = len(values)
        self.values[:n] = values
        self.pos[:n] = np.arange(first, first + n)
        self.logits[:n] = 0
        self.logits[n - 1] = logits
        self.batch.n_tokens = n

    def __del__(self) -> None:
        self._free()


class _Detokenizer:
    """Token pieces as bytes, decoded incrementally: a character split over tokens comes out whole."""

    def __init__(self, lib, vocab) -> None:
        self._lib, self._vocab = lib, vocab
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ctypes.create_string_buffer(256)

    def push(self, token: int) -> str:
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, False)
        if n < 0:  # longer than the buffer: -n bytes
            self._buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, False)
        return self._text.decode(self._buffer.raw[:n])

    def flush(self) -> str:
        return self._text.decode(b"", final=True).rstrip("\ufffd")


class _ChatTemplate:
    """The GGUF's chat template (``tokenizer.chat_template``), rendered as transformers renders it:
    sandboxed Jinja, blocks trimmed, the tokenizer's special tokens as variables."""

    def __init__(self, metadata: dict, *, name: str, special: dict[str, str]) -> None:
        import json

        from jinja2.ext import loopcontrols  # jinja2 comes with llama-cpp-python
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        source = metadata.get("tokenizer.chat_template")
        if not source:
            raise MMChatError(f"{name} has no chat template in its GGUF file.")

        def raise_exception(message):
            raise MMChatError(f"The chat template of {name} refused the chat: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        env.globals.update(raise_exception=raise_exception,
                           strftime_now=lambda fmt: time.strftime(fmt))
        self._template = env.from_string(source)
        self._tokens = special

    def render(self, chat: list[dict]) -> str:
        return self._template.render(messages=chat, add_generation_prompt=True, tools=None, documents=None,
                                     **self._tokens)


class _TokenEmbedding:
    """Rows of the GGUF's token embedding table, de-quantised on demand as llama.cpp does it for its
    first layer (the whole table would be 545 MB as float32 for Qwen's 151 936 tokens).

    Rows are read with ``pread``, not through a memory map: a fused audio projector asks for a few
    thousand scattered rows, and each fault on a map brings in its neighbours too (the kernel's
    fault-around), which put 77 MB of the file into this process's resident memory for 5 MB of rows."""

    def __init__(self, path: Path) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        _, shape, kind, self._offset = gguf.find_tensor(path, "token_embd.weight")
        self._path = path
        self._type = GGMLQuantizationType(kind)
        block, block_bytes = GGML_QUANT_SIZES[self._type]
        width, self._n_rows = shape[0], shape[1]  # GGUF lists dimensions innermost first
        self._row_bytes = width // block * block_bytes

    def rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        import torch
        from gguf.quants import dequantize

        ids = token_ids.to(torch.long).reshape(-1).numpy()
        if ids.size and not (0 <= ids.min() and ids.max() < self._n_rows):
            raise IndexError(f"token ids outside the vocabulary of {self._n_rows}")
        unique, where = np.unique(ids, return_inverse=True)
        table = np.empty((len(unique), self._row_bytes), dtype=np.uint8)
        fd = os.open(self._path, os.O_RDONLY)
        try:
            for i, token in enumerate(unique.tolist()):
                table[i] = np.frombuffer(os.pread(fd, self._row_bytes, self._offset + token * self._row_bytes), np.uint8)
        finally:
            os.close(fd)
        rows = dequantize(table, self._type).reshape(len(unique), -1)[where]
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).reshape(*token_ids.shape, -1)
