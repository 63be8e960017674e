"""The torch runtime: transformers' model on a de-quantised copy of the LLM, run by our own loop
over ``model(inputs_embeds=..., cache=...)``, reusing the previous call's KV cache for the common
prefix. Fusion training needs it (gradients through the model); chat runs on llama.cpp unless
``MMCHAT_LLM_RUNTIME=torch`` or the model is a Hugging Face download.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmchat import quant, registry
from mmchat.cache import Progress
from mmchat.errors import MMChatError
from mmchat.llm.base import (MAX_CONTEXT_TOKENS, PREFILL_CHUNK_TOKENS, ChatModel, GenerationConfig, GenerationStats,
                             _Prompt)
from mmchat.llm_convert import model_dir

log = logging.getLogger(__name__)

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
            logits = out.logits[0, -1].float().numpy()
        return logits

    def _embed_from(self, prompt: _Prompt, *, start: int) -> torch.Tensor:
        """Embeddings of prompt positions ``start:``, text embedded and media rows as given."""
        rows, position = [], 0
        embedding = self.model.get_input_embeddings()
        for piece in prompt.pieces:
            end = position + len(piece)
            if end > start:
                part = piece[max(start - position, 0):]
                rows.append(embedding(torch.from_numpy(part)) if piece.ndim == 1 else part)
            position = end
        return torch.cat(rows).to(self.dtype)

    @torch.inference_mode()
    def _forward_token(self, cache, token: int) -> np.ndarray:
        if self._step is not None:
            return self._step(cache, token).float().numpy()
        out = self.model(input_ids=torch.tensor([[token]]), **with_cache(self.model, cache), use_cache=True)
        return out.logits[0, -1].float().numpy()


class _DecodeStep:
    """One decoded token through a Llama-style decoder (Qwen2, Llama: SmolLM2), calling the model's
    own modules and functions in transformers' order (the logits are bit-identical, a test checks,
    below scripted_step.GROUPED_ATTENTION_FROM cached positions; from there on attention is
    grouped_attention)
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
        from mmchat import scripted_step  # imports transformers: not on llama.cpp's path

        self.grouped_from = scripted_step.GROUPED_ATTENTION_FROM
        self.grouped_attention = scripted_step.grouped_attention
        self.scripted = scripted_step.ScriptedStep.build(model, [qkv[0] if qkv else None for qkv in self.qkv])

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
            if k.shape[-2] >= self.grouped_from and q.shape[1] % k.shape[1] == 0:
                o = self.grouped_attention(q, k, v, attn.scaling)
            else:
                o = nn.functional.scaled_dot_product_attention(q, k, v, scale=attn.scaling,
                                                               enable_gqa=k.shape[1] != q.shape[1])
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            x = x + mlp.forward(norm_post(x))  # transformers' gated MLP, or ours (_GateUpMLP)
        return self.head(self.norm(x))[0, -1].float()


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
