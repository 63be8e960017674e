"""The fp16 one-token decode step as one TorchScript call.

Around its weight kernels a decoded token runs about 30 small tensor ops per layer (norms, rotary
embedding, reshapes, the cache write, attention, residual adds). Called from Python each costs a
few microseconds of dispatch: about 10 ms of a 48 ms token for Qwen 0.5B on 2 cores. Scripted, the
whole step is a single call into TorchScript's interpreter, which runs the same aten kernels in
the same order, so the logits stay bit-identical to transformers' forward (tests check Qwen2 and
Llama/SmolLM2), in 38 ms.

It covers the layout :class:`mmchat.llm.torch_runtime._DecodeStep` knows (Qwen2, Llama: RMS norms, rotate-half
rotary embedding, SiLU-gated MLP) once every linear layer is fp16 (:class:`~mmchat.quant.HalfLinear`,
the default precision) and the cache appends in place (:class:`~mmchat.kvcache.GrowingLayer`).
Anything else, such as float precision, gets ``None`` from :meth:`ScriptedStep.build` or from a
call and decodes through the Python step.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import List

import torch
from torch import Tensor, nn

from mmchat import quant
from mmchat.kvcache import GrowingLayer, new_cache

__all__ = ["GROUPED_ATTENTION_FROM", "ScriptedStep", "grouped_attention"]

log = logging.getLogger(__name__)

GROUPED_ATTENTION_FROM = 1024  # cached positions from which a decoded token's attention is two matmuls

try:  # a HalfLinear's fp16 weight (and bias); a torch without it gets the Python step (build fails)
    Packed = torch.classes.quantized.LinearPackedParamsBase
except (AttributeError, RuntimeError):
    Packed = None


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """One query position's attention with grouped key/value heads as two batched matmuls and a
    softmax: each key/value head serves its group of query heads as one matrix. For one query over
    7k cached positions this takes 0.48 ms per layer where sdpa takes 0.87 ms (2 cores); results
    agree to ~2e-7, not bit for bit, so it is used only from GROUPED_ATTENTION_FROM positions on."""
    batch, heads, dim = q.shape[0], q.shape[1], q.shape[3]
    groups = k.shape[1]
    scores = torch.matmul((q * scale).reshape(batch, groups, heads // groups, dim), k.transpose(-1, -2))
    return torch.matmul(torch.softmax(scores, dim=-1), v).reshape(batch, heads, 1, dim)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' Qwen2/Llama RMSNorm on float32 activations, op for op."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """transformers' ``apply_rotary_pos_emb`` for one of q or k (rotate-half form), op for op."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _step(x: Tensor, cos: Tensor, sin: Tensor, position: int, keys: List[Tensor], values: List[Tensor],
          norms_in: List[Tensor], norms_post: List[Tensor], qkv: List[Packed], out: List[Packed],
          gate_up: List[Packed], down: List[Packed], final_norm: Tensor, head: Packed,
          eps: float, heads: int, kv_heads: int, head_dim: int, intermediate: int, scale: float,
          grouped_from: int) -> Tensor:
    """Logits of the token embedded as ``x`` (1, 1, hidden) at ``position``, writing its keys and
    values into each layer's buffers there (they must have room)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    for i in range(len(qkv)):
        q, k, v = torch.ops.quantized.linear_dynamic_fp16(_rms_norm(x, norms_in[i], eps), qkv[i]).split(sizes, -1)
        q = _rotate(q.reshape(1, 1, heads, head_dim).transpose(1, 2), cos, sin)
        keys[i][:, :, position:position + 1].copy_(_rotate(k.reshape(1, 1, kv_heads, head_dim).transpose(1, 2),
                                                            cos, sin))
        values[i][:, :, position:position + 1].copy_(v.reshape(1, 1, kv_heads, head_dim).transpose(1, 2))
        k, v = keys[i][:, :, :position + 1], values[i][:, :, :position + 1]
        if position + 1 >= grouped_from and heads % kv_heads == 0:
            o = grouped_attention(q, k, v, scale)
        else:
            o = nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=heads != kv_heads)
        x = x + torch.ops.quantized.linear_dynamic_fp16(o.transpose(1, 2).reshape(1, 1, heads * head_dim), out[i])
        gate, up = torch.ops.quantized.linear_dynamic_fp16(_rms_norm(x, norms_post[i], eps), gate_up[i]).split(
            [intermediate, intermediate], -1)
        x = x + torch.ops.quantized.linear_dynamic_fp16(nn.functional.silu(gate) * up, down[i])
    return torch.ops.quantized.linear_dynamic_fp16(_rms_norm(x, final_norm, eps), head)[0, -1]


@functools.cache
def _scripted():
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, yet still in torch 2.x
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_step)


class ScriptedStep:
    """The scripted step bound to one model's fp16 weights. Call it with the cache, the token's
    embedding and its rotary cos/sin; it returns the logits, or ``None`` when the cache is not
    one it can write (then nothing was changed)."""

    def __init__(self, model, qkv: list[quant.HalfLinear]) -> None:
        decoder, config = model.get_decoder(), model.config
        attention = decoder.layers[0].self_attn
        norms = [n for layer in decoder.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        if len({n.variance_epsilon for n in norms + [decoder.norm]}) != 1:
            raise AttributeError("layers with different norm epsilons")
        self.weights = dict(
            norms_in=[layer.input_layernorm.weight for layer in decoder.layers],
            norms_post=[layer.post_attention_layernorm.weight for layer in decoder.layers],
            qkv=[layer._packed for layer in qkv], out=[layer.self_attn.o_proj._packed for layer in decoder.layers],
            gate_up=[layer.mlp.gate_up._packed for layer in decoder.layers],
            down=[layer.mlp.down_proj._packed for layer in decoder.layers],
            final_norm=decoder.norm.weight, head=model.get_output_embeddings()._packed,
            eps=float(decoder.norm.variance_epsilon), heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads, head_dim=attention.head_dim,
            intermediate=decoder.layers[0].mlp.split, scale=float(attention.scaling),
            grouped_from=GROUPED_ATTENTION_FROM)  # an argument: scripting rejects the module-level int
        self.function = _scripted()

    @classmethod
    def build(cls, model, qkv: list) -> ScriptedStep | None:
        """The scripted step for ``model`` (``qkv``: each layer's fused projection), or None when a
        layer is not the fp16 layout it covers or TorchScript is unavailable."""
        from transformers.activations import SiLUActivation

        def half(module) -> bool:
            return isinstance(module, quant.HalfLinear)

        fits = (all(half(p) for p in qkv) and half(model.get_output_embeddings())
                and all(half(layer.self_attn.o_proj) and half(getattr(layer.mlp, "gate_up", None))  # _GateUpMLP
                        and half(layer.mlp.down_proj) and isinstance(layer.mlp.act_fn, (nn.SiLU, SiLUActivation))
                        for layer in model.get_decoder().layers))
        if not fits:
            return None
        try:
            step = cls(model, qkv)
            step.warm_up(model.config)
            return step
        except Exception as exc:  # noqa: BLE001 - any failure here leaves decoding to the Python step
            log.info("decoding through the Python step (%s: %s)", type(exc).__name__, exc)
            return None

    @torch.inference_mode()
    def warm_up(self, config) -> None:
        """Two steps on a throwaway one-position cache. TorchScript profiles a function's first call
        and optimises it on the second: without this the first reply's first two tokens took 84-91
        and 49-56 ms where later ones take 43-47 (Qwen 0.5B, 2 cores); the load pays instead."""
        cache, w = new_cache(config), self.weights
        state = torch.zeros(1, w["kv_heads"], 1, w["head_dim"])
        for layer in cache.layers:
            layer.update(state, state)
        x, angle = torch.zeros(1, 1, config.hidden_size), torch.zeros(1, 1, w["head_dim"])
        for _ in range(2):
            self(cache, x, angle.cos(), angle.sin())

    def __call__(self, cache, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor | None:
        layers = cache.layers
        if not all(type(layer) is GrowingLayer and layer.is_initialized for layer in layers):
            return None
        position = layers[0].get_seq_length()
        buffers = [layer.reserve(position + 1) for layer in layers]
        logits = self.function(x, cos, sin, position, [b[0] for b in buffers], [b[1] for b in buffers],
                               **self.weights)
        for layer in layers:
            layer.set_length(position + 1)
        return logits
