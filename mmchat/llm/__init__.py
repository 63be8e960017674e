"""The LLM runtimes: load a registry model, stream chat replies, splice media embeddings.

:class:`ChatModel` is what they share: fitting a chat into the window, the chat template, media
rows (already projected into the LLM's embedding space) between text tokens, and the decoding loop,
which checks a Stop flag every token and detokenises incrementally, never yielding a broken
character. Chat runs on llama.cpp (:mod:`mmchat.llm.llamacpp`). :class:`LLM` here is the torch
runtime, which fusion training needs (gradients through the model): our own loop over
``model(inputs_embeds=..., cache=...)`` on a de-quantised copy, reusing the previous call's KV
cache for the common prefix.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmchat import quant, registry
from mmchat.cache import Progress
from mmchat.context import MEDIA_PLACEHOLDER, count_placeholders, fit_messages
from mmchat.errors import MMChatError
from mmchat.llm_convert import model_dir
from mmchat.scripted_step import GROUPED_ATTENTION_FROM, ScriptedStep, grouped_attention

__all__ = ["ChatModel", "GenerationConfig", "GenerationStats", "LLM", "MEDIA_PLACEHOLDER"]

log = logging.getLogger(__name__)

MAX_CONTEXT_TOKENS = 8192  # cap on the prompt + reply window, for speed on CPU
PREFILL_CHUNK_TOKENS = 512  # prompt positions per forward pass (bounds attention memory)
FIT_ATTEMPTS = 3  # re-fits when the rendered template costs more than estimated
# End-of-turn markers of common chat templates; used only when they are special tokens.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
PREFERRED_DTYPE = torch.bfloat16  # halves RAM; used where the CPU has native bf16 (see _pick_dtype)
PRECISIONS = ("fp16", "float")  # decoder linear layers: fp16 weights (see mmchat.quant), or all float
PRECISION_ENV = "MMCHAT_LLM_PRECISION"  # overrides the default precision (fp16 where torch has the kernels)

# transformers' sdpa attention repeats the key/value heads to the query heads' count (2 -> 14 for
# Qwen 0.5B) whenever a mask is present, i.e. for every prefill on top of a cached prefix, unless
# told to let sdpa group the heads itself: a 15-token turn over 7k cached positions then prefills in
# 0.23 s instead of 0.71 s. Set before any forward pass; read by transformers at each call.
os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")


def with_cache(model: nn.Module, cache) -> dict:
    """The keyword argument that hands ``model`` its KV cache: ``cache`` from transformers 5.24, where
    ``past_key_values`` is deprecated (removed in 5.40), and ``past_key_values`` before it."""
    return {_cache_keyword(type(model)): cache}


def cache_of(output):
    """The KV cache in a model's output (``cache`` from transformers 5.24, ``past_key_values`` before)."""
    return output["cache"] if "cache" in output else output.past_key_values


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.7  # 0 -> greedy
    top_p: float = 0.9
    top_k: int = 40  # 0 -> no top-k cut
    repetition_penalty: float = 1.1  # 1.0 -> none
    seed: int | None = None  # same seed + same prompt + same cache state -> same reply

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.temperature < 0 or self.top_k < 0:
            raise ValueError(f"negative generation setting in {self}")
        if not 0.0 < self.top_p <= 1.0 or self.repetition_penalty <= 0:
            raise ValueError(f"top_p must be in (0, 1] and repetition_penalty > 0: {self}")


@dataclass(frozen=True)
class GenerationStats:
    """What the last call did (for the UI's status line and benchmarks)."""

    prompt_tokens: int  # prompt positions: text tokens + media rows
    reused_tokens: int  # of those, served from the previous call's KV cache
    generated_tokens: int
    dropped_messages: int  # removed by context budgeting
    prefill_seconds: float
    decode_seconds: float
    stop_reason: str  # "eos", "length", "context" or "stopped"

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class _Prompt:
    """A prompt as pieces (1-D token ids or 2-D media rows) and one comparable key per position."""

    pieces: list[torch.Tensor]
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

    def _forward_token(self, cache, token: int) -> torch.Tensor:
        """The logits after feeding ``token`` at the next position."""
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
        # The reply gets max_new_tokens of room, but the prompt always keeps a quarter of the window.
        budget = max(self.context_length - config.max_new_tokens, self.context_length // 4)
        prompt = self._build_prompt(messages, media, max_prompt_tokens=budget)
        return self._run(prompt, config=config, stop=stop)

    def generate(self, messages: list[dict], *, config: GenerationConfig = GenerationConfig(),
                 media: Sequence[torch.Tensor] = (), stop: threading.Event | None = None) -> str:
        """The whole reply as one string (see :meth:`stream`)."""
        return "".join(self.stream(messages, config=config, media=media, stop=stop))

    def _check_media(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.ndim != 2 or rows.shape[1] != self.hidden_size:
            raise ValueError(f"media must be (k, {self.hidden_size}) tensors, got {tuple(rows.shape)}")
        return rows.detach().to(device="cpu", dtype=self.dtype).contiguous()

    def _decode(self, cache, keys: list, logits: torch.Tensor, *, prompt: _Prompt, config: GenerationConfig,
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
                pieces.append(torch.tensor(ids, dtype=torch.long))
                keys.extend(ids)
            if i < len(kept_media):
                rows = kept_media[i]
                digest = hashlib.blake2b(rows.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()
                pieces.append(rows)
                keys.extend((digest, r) for r in range(len(rows)))
        return _Prompt(pieces=pieces, keys=keys, dropped_messages=dropped)


class LLM(ChatModel):
    """A chat model run by torch (transformers' model, our decoding loop). Use :meth:`load`; one
    generation at a time per instance is cheapest. Fusion training runs on this one: it has gradients."""

    def __init__(self, *, name: str, model, tokenizer) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        config = model.config.get_text_config()
        self.hidden_size: int = config.hidden_size
        self.context_length: int = min(config.max_position_embeddings, MAX_CONTEXT_TOKENS)
        # What the input embeddings come out as (fp16 precision: float32 rows of a bf16 table).
        self.dtype: torch.dtype = model.get_input_embeddings()(torch.zeros(1, dtype=torch.long)).dtype
        self.stop_ids: frozenset[int] = _stop_ids(model, tokenizer)
        self.last_stats: GenerationStats | None = None
        self._lock = threading.Lock()
        self._cache = None  # the previous call's DynamicCache ...
        self._cache_keys: list = []  # ... and the keys of the positions it holds
        self._step = _DecodeStep.for_model(model)

    @classmethod
    def load(cls, name: str | None = None, *, precision: str | None = None,
             progress: Progress | None = None) -> LLM:
        """Load a registry LLM (default: the registry's default), converting it once if needed."""
        spec = registry.get(name) if name else registry.default(registry.Role.LLM)
        if spec.role is not registry.Role.LLM:
            raise MMChatError(f"{spec.name} is not a language model.",
                              hint="Choose one of: " + ", ".join(m.name for m in registry.by_role(registry.Role.LLM)))
        return cls.from_directory(model_dir(spec, progress=progress), name=spec.name, precision=precision)

    @classmethod
    def from_directory(cls, path: Path, *, name: str | None = None, precision: str | None = None) -> LLM:
        """Load a plain Hugging Face model directory (config, safetensors, tokenizer files).

        ``precision`` "fp16" converts the decoder layers' linear weights and the output matrix to
        fp16 while loading (see :mod:`mmchat.quant` and :func:`_to_half_layers`); input embedding
        rows come out as float32 and the arithmetic is float32. ``None`` means :func:`default_precision`."""
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer

        precision = precision or default_precision()
        if precision not in PRECISIONS:
            raise MMChatError(f"Unknown LLM precision {precision!r}.", hint="Use one of: " + ", ".join(PRECISIONS))
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            # fp16: read the saved (bf16) weights as they are, memory-mapped, and convert layer by
            # layer, so no full fp32 copy of the model is ever held.
            model = AutoModelForCausalLM.from_pretrained(path, dtype="auto" if precision == "fp16" else _pick_dtype(),
                                                         local_files_only=True,
                                                         use_safetensors=True)  # never a pickled .bin
        except (OSError, ValueError, SafetensorError) as exc:
            raise MMChatError(f"Could not load the model in {path}: {exc}",
                              hint="Fetch or convert it again (delete that directory first).") from exc
        if precision == "fp16":
            _to_half_layers(model, Path(path))
        model.precision = precision
        log.info("loaded %s (%s, %s) in %.1f s", path, precision, model.dtype, time.perf_counter() - started)
        return cls(name=name or Path(path).name, model=model.eval(), tokenizer=tokenizer)

    # ----------------------------------------------------------------- tokens and embeddings
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render(self, chat: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def _detokenizer(self) -> _Detokenizer:
        return _Detokenizer(self.tokenizer)

    @torch.no_grad()
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``token_ids`` (any shape) -> ``(*shape, hidden_size)``."""
        return self.model.get_input_embeddings()(token_ids.to(torch.long))

    def reset_cache(self) -> None:
        """Forget the previous call's KV cache (frees its memory)."""
        with self._lock:
            self._cache, self._cache_keys = None, []

    # ----------------------------------------------------------------- generation
    def _run(self, prompt: _Prompt, *, config: GenerationConfig, stop: threading.Event | None) -> Iterator[str]:
        """Prefill and decode (a generator: nothing runs until the first ``next``)."""
        cache, reused = self._take_cache(prompt.keys)
        keys = list(prompt.keys[:reused])  # the positions actually in ``cache``
        state = {"generated": 0, "reason": "stopped"}
        started = time.perf_counter()
        prefill_s = 0.0
        try:
            logits = self._prefill(cache, prompt, keys, stop=stop)
            prefill_s = time.perf_counter() - started
            if logits is not None:
                yield from self._decode(cache, keys, logits, prompt=prompt, config=config, stop=stop, state=state)
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):  # failed mid-forward: the cache may be half-updated
                cache, keys = None, []
            raise
        finally:
            self._put_cache(cache, keys)
            total = time.perf_counter() - started
            self.last_stats = GenerationStats(
                prompt_tokens=len(prompt.keys), reused_tokens=reused, generated_tokens=state["generated"],
                dropped_messages=prompt.dropped_messages, prefill_seconds=prefill_s,
                decode_seconds=max(total - prefill_s, 0.0), stop_reason=state["reason"])

    # ----------------------------------------------------------------- KV cache
    @torch.inference_mode()
    def _take_cache(self, keys: list):
        """Take the previous cache, cropped to the longest common prefix with ``keys`` (at most len-1)."""
        from mmchat.kvcache import new_cache

        with self._lock:
            cache, cached_keys = self._cache, self._cache_keys
            self._cache, self._cache_keys = None, []
        common = 0
        if cache is not None:
            limit = min(len(cached_keys), len(keys) - 1)
            while common < limit and cached_keys[common] == keys[common]:
                common += 1
            if common < len(cached_keys) and not (common > 0 and cache.is_croppable):
                cache, common = None, 0
            elif common < len(cached_keys):
                cache.crop(common - len(cached_keys))
        return (cache if cache is not None else new_cache(self.model.config)), common

    def _put_cache(self, cache, keys: list) -> None:
        with self._lock:
            self._cache, self._cache_keys = cache, keys

    @torch.inference_mode()
    def _prefill(self, cache, prompt: _Prompt, keys: list, *, stop: threading.Event | None):
        """Run the prompt positions not yet in ``cache``; the last position's logits, or None if stopped."""
        embeds = self._embed_from(prompt, start=len(keys))
        logits = None
        for begin in range(0, len(embeds), PREFILL_CHUNK_TOKENS):
            if stop is not None and stop.is_set():
                return None
            chunk = embeds[begin:begin + PREFILL_CHUNK_TOKENS]
            out = self.model(inputs_embeds=chunk[None], **with_cache(self.model, cache), use_cache=True,
                             logits_to_keep=1)
            keys.extend(prompt.keys[len(keys):len(keys) + len(chunk)])
            logits = out.logits[0, -1].float()
        return logits

    def _embed_from(self, prompt: _Prompt, *, start: int) -> torch.Tensor:
        """Embeddings of prompt positions ``start:``, text embedded and media rows as given."""
        rows, position = [], 0
        embedding = self.model.get_input_embeddings()
        for piece in prompt.pieces:
            end = position + len(piece)
            if end > start:
                part = piece[max(start - position, 0):]
                rows.append(embedding(part) if piece.ndim == 1 else part)
            position = end
        return torch.cat(rows).to(self.dtype)

    @torch.inference_mode()
    def _forward_token(self, cache, token: int) -> torch.Tensor:
        if self._step is not None:
            return self._step(cache, token)
        out = self.model(input_ids=torch.tensor([[token]]), **with_cache(self.model, cache), use_cache=True)
        return out.logits[0, -1].float()


class _DecodeStep:
    """One decoded token through a Llama-style decoder (Qwen2, Llama: SmolLM2), calling the model's
    own modules and functions in transformers' order (the logits are bit-identical, a test checks,
    below GROUPED_ATTENTION_FROM cached positions; from there on attention is grouped_attention)
    without its per-call machinery: mask construction, keyword plumbing and output objects cost
    3 ms of a 53 ms token on 2 cores. With fp16 layers the query, key and value projections also run
    as one fused kernel call (a packed copy of those three, 50 MB for Qwen 0.5B): another 3 ms,
    since each call costs ~50 us however small its matrix; and the whole step runs as one
    TorchScript call (:mod:`mmchat.scripted_step`, ~20 % faster again) when the cache appends in
    place. Prefill, where that machinery is amortised, stays with transformers. Models it does not
    know (or with sliding-window attention) get ``None`` from :meth:`for_model` and decode through
    transformers."""

    ARCHITECTURES = ("qwen2", "llama")

    def __init__(self, model) -> None:
        decoder = model.get_decoder()
        self.embed, self.rotary, self.norm, self.head = (decoder.embed_tokens, decoder.rotary_emb, decoder.norm,
                                                         model.get_output_embeddings())
        self.rope = sys.modules[type(decoder.layers[0]).__module__].apply_rotary_pos_emb
        self.layers = [(layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm, layer.mlp)
                       for layer in decoder.layers]
        self.qkv = []  # per layer: (fused projection, output sizes), or None
        for layer in decoder.layers:
            parts = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
            fused = all(isinstance(p, quant.HalfLinear) for p in parts)
            self.qkv.append((quant.fuse(parts), [p.out_features for p in parts]) if fused else None)
        self.scripted = ScriptedStep.build(model, [qkv[0] if qkv else None for qkv in self.qkv])

    @classmethod
    def for_model(cls, model) -> _DecodeStep | None:
        config = model.config
        if (config.model_type not in cls.ARCHITECTURES or getattr(config, "use_sliding_window", False)
                or getattr(config, "_attn_implementation", None) != "sdpa"):
            return None
        try:
            return cls(model)
        except AttributeError as exc:  # a layout this code does not know
            log.info("decoding %s through transformers (%s)", config.model_type, exc)
            return None

    def __call__(self, cache, token: int) -> torch.Tensor:
        x = self.embed(torch.tensor([[token]]))
        cos, sin = self.rotary(x, torch.tensor([[cache.get_seq_length()]]))
        if self.scripted is not None:
            logits = self.scripted(cache, x, cos, sin)
            if logits is not None:
                return logits
        for index, ((norm_in, attn, norm_post, mlp), qkv) in enumerate(zip(self.layers, self.qkv)):
            h = norm_in(x)
            q, k, v = (qkv[0](h).split(qkv[1], -1) if qkv is not None
                       else (attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)))
            q, k, v = (t.reshape(1, 1, -1, attn.head_dim).transpose(1, 2) for t in (q, k, v))
            q, k = self.rope(q, k, cos, sin)
            k, v = cache.update(k, v, index)
            if k.shape[-2] >= GROUPED_ATTENTION_FROM and q.shape[1] % k.shape[1] == 0:
                o = grouped_attention(q, k, v, attn.scaling)
            else:
                o = nn.functional.scaled_dot_product_attention(q, k, v, scale=attn.scaling,
                                                               enable_gqa=k.shape[1] != q.shape[1])
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            x = x + mlp.forward(norm_post(x))  # transformers' gated MLP, or ours (_GateUpMLP)
        return self.head(self.norm(x))[0, -1].float()


class _Sampler:
    """Repetition penalty, then greedy or temperature / top-k / top-p sampling."""

    def __init__(self, config: GenerationConfig, prompt_ids: list[int]) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        self.seen = set(prompt_ids)
        self.seen_ids = torch.tensor(sorted(self.seen), dtype=torch.long)

    def observe(self, token: int) -> None:
        if token not in self.seen:
            self.seen.add(token)
            self.seen_ids = torch.cat([self.seen_ids, torch.tensor([token])])

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor) -> int:
        c = self.config
        if c.repetition_penalty != 1.0 and len(self.seen_ids):
            score = logits[self.seen_ids]
            logits[self.seen_ids] = torch.where(score < 0, score * c.repetition_penalty, score / c.repetition_penalty)
        if c.temperature == 0:
            return int(logits.argmax())
        if c.top_k > 0:
            values, indices = torch.topk(logits, min(c.top_k, logits.numel()))
        else:
            values, indices = torch.sort(logits, descending=True)
        probs = torch.softmax(values / c.temperature, dim=-1)
        if c.top_p < 1.0:
            probs = probs * ((probs.cumsum(0) - probs) < c.top_p)  # always keeps the top token
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return int(indices[choice])


class _Detokenizer:
    """Incremental detokenisation: emit text only once it decodes to whole characters.

    Decodes a short window starting a step behind the read position, so tokenisers that change
    leading spaces at the start of a decode give the same text as decoding everything at once.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids up to here have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done):]
        return ""

    def flush(self) -> str:
        """Whatever is left, without a trailing incomplete character."""
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):].rstrip("\ufffd")


def _stop_ids(model, tokenizer) -> frozenset[int]:
    """EOS ids from the generation config and tokenizer, plus special end-of-turn tokens."""
    ids: set[int] = set()
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    added = tokenizer.get_added_vocab()
    ids.update(added[t] for t in END_OF_TURN_TOKENS if t in added)
    return frozenset(ids)


class _GateUpMLP(nn.Module):
    """A gated MLP (Qwen2, Llama) whose gate and up projections are one fp16 matrix: one kernel
    call per layer instead of two (each call costs ~50 us on top of reading its weights), and no
    extra memory, since the two halves are not kept. The same numbers as the two projections (a
    test checks): each output column is its own dot product either way."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.gate_up = quant.fuse([mlp.gate_proj, mlp.up_proj])
        self.down_proj, self.act_fn, self.split = mlp.down_proj, mlp.act_fn, mlp.gate_proj.out_features

    @staticmethod
    def fits(mlp: nn.Module) -> bool:
        parts = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
        return (hasattr(mlp, "act_fn") and all(type(p) is nn.Linear for p in parts)
                and parts[0].in_features == parts[1].in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.split, -1)
        return self.down_proj(self.act_fn(gate) * up)


def _to_half_layers(model, path: Path) -> None:
    """fp16 linear weights, layer by layer, giving back the memory-mapped file's pages as it goes,
    so the load peaks near the final size instead of holding the whole bf16 file plus copies.

    The tied vocabulary matrix (a third of the model) is used twice: the output projection gets
    its own fp16 packed copy, and the input lookup reads rows straight from the mapped file
    (:class:`~mmchat.quant.FloatEmbedding`): no fp32 copy of it is ever kept."""
    embedding = model.get_input_embeddings()
    head = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False, device="meta")
    head.weight = embedding.weight
    model.set_output_embeddings(quant.HalfLinear(head))
    model.set_input_embeddings(quant.FloatEmbedding(embedding))
    model.config.tie_word_embeddings = False  # nothing to re-tie: a later tie_weights() must not undo this
    del head
    quant.release_file_pages(path)
    for layer in model.get_decoder().layers:
        if _GateUpMLP.fits(layer.mlp):
            layer.mlp = _GateUpMLP(layer.mlp)
        quant.convert_layers(layer)
        quant.release_file_pages(path)
    quant.float_the_rest(model, keep=model.get_input_embeddings().weight)  # the norms, rotary buffers
    quant.release_file_pages(path)


def default_precision() -> str:
    """fp16 decoder weights where this torch has fbgemm, unless $MMCHAT_LLM_PRECISION says otherwise."""
    wanted = os.environ.get(PRECISION_ENV, "").strip().lower()
    if wanted:
        return wanted
    return "fp16" if quant.available() else "float"


def _pick_dtype() -> torch.dtype:
    """bf16 where the CPU does bf16 matmuls natively (AVX512-BF16/AMX), else float32.

    Measured on an AVX2-only CPU: a 64-row bf16 GEMM is 4x slower than fp32 (emulated), and
    single-token decode is no faster, so bf16 only pays where the hardware has it."""
    from mmchat import probe

    if not probe.bf16().ok:
        return torch.float32
    try:
        check = torch.ones(4, 4, dtype=PREFERRED_DTYPE)
        if torch.isfinite((check @ check).float()).all():
            return PREFERRED_DTYPE
    except RuntimeError:
        log.warning("bf16 matmul unavailable on this CPU; using float32")
    return torch.float32
