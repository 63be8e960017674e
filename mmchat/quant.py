"""Half-size weights for the linear layers of the LLM, Whisper and CLIP's vision tower, converted
as each model loads.

A decoder on a 2-core CPU spends its time reading weights. :class:`HalfLinear` keeps a layer's
weight in fp16 (fbgemm's packed form) and multiplies in fp32, converting the weight on the fly
inside the GEMM: half the bytes per token of fp32, and the same results to about 2e-4 relative.

Why not int8: fbgemm's dynamic int8 kernel quantises the activations with one scale per call, so
a token's output depends on which other tokens share the call — a cached prefix and a fresh
prefill disagree, and greedy replies changed ("France" for the capital of France with every layer
int8). fp16 weights leave activations alone: each token's result depends on that token only.
Measured on a 2-core AVX2 CPU: Qwen2.5-0.5B decodes 10 tokens/s against fp32's 5 with the same
greedy text; Whisper-base transcribes a 5 s clip in 0.40 s against 0.48 s, with the same words.

The layer stays differentiable with respect to its input (the fusion trainer's answer loss
backpropagates through the frozen LLM into the media tokens): the backward unpacks the weight to
fp32 for its one product.

:func:`convert_layers` swaps ``nn.Linear`` modules one at a time, so the float copy of only one
layer exists beside the packed weights at any moment. :class:`FloatEmbedding` serves an embedding
table's rows (as float32) straight from the saved, memory-mapped matrix: the LLM's vocabulary
matrix is kept once as its fp16 output projection, with no fp32 copy for the input side.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from pathlib import Path

import torch
from torch import nn

__all__ = ["FloatEmbedding", "HalfLinear", "available", "convert_layers", "float_the_rest", "fuse",
           "release_file_pages", "weight_bytes"]

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # Linux madvise(2): drop these pages; a file mapping re-reads them on the next access


def available() -> bool:
    """Whether this torch build has fbgemm's CPU kernels (fp16-weight GEMM)."""
    return bool({"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines))


class HalfLinear(nn.Module):
    """``nn.Linear`` with fp16 weights, fp32 bias, activations and accumulation."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self._packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.nbytes = 2 * linear.weight.numel() + (0 if bias is None else 4 * bias.numel())  # for weight_bytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return _HalfLinearFunction.apply(x, self)
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self._packed).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 weights"


class FloatEmbedding(nn.Module):
    """An embedding table kept as given (e.g. a memory-mapped bf16 matrix) whose rows come out as
    float32. A lookup touches only the rows it reads, so a file-backed table costs almost no
    resident memory: the LLM's 151936-row vocabulary needs no fp32 copy for the input side."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.weight = embedding.weight
        self.padding_idx = embedding.padding_idx
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight, self.padding_idx).float()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.weight.dtype} rows as float32"


class _HalfLinearFunction(torch.autograd.Function):
    """The fast kernel forward; backward to the input only (the weights are frozen), unpacking the
    weight for that one product instead of keeping a float copy of every layer for the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: HalfLinear) -> torch.Tensor:
        ctx.layer = layer
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), layer._packed).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, _ = torch.ops.quantized.linear_unpack_fp16(ctx.layer._packed)
        return grad @ weight.to(grad.dtype), None


def fuse(layers: list[nn.Linear | HalfLinear]) -> HalfLinear:
    """One fp16 layer computing ``torch.cat([layer(x) for layer in layers], -1)``: a single kernel
    call instead of several (each costs ~50 us however small, e.g. a 896x128 key projection).
    Takes float layers or :class:`HalfLinear` ones; biasless layers get zeros only when another
    part has a bias."""
    weights, biases = [], []
    for layer in layers:
        if isinstance(layer, HalfLinear):
            weight, bias = torch.ops.quantized.linear_unpack_fp16(layer._packed)
        else:
            weight, bias = layer.weight.detach().float(), None if layer.bias is None else layer.bias.detach().float()
        weights.append(weight)
        biases.append(bias)
    linear = nn.Linear(weights[0].shape[1], sum(w.shape[0] for w in weights), device="meta",
                       bias=any(b is not None for b in biases))
    linear.weight = nn.Parameter(torch.cat(weights), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(torch.cat([torch.zeros(w.shape[0]) if b is None else b
                                              for w, b in zip(weights, biases)]), requires_grad=False)
    return HalfLinear(linear)


def convert_layers(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` by a :class:`HalfLinear`, in place, dropping each
    float weight as soon as its packed copy exists. Returns how many layers were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, HalfLinear(child))
                replaced += 1
    return replaced


def float_the_rest(module: nn.Module, *, keep: torch.Tensor | None = None) -> None:
    """After :func:`convert_layers`: every remaining floating parameter and buffer of ``module``
    (norms, convolutions, position tables) to float32, in place, except the tensor ``keep`` (a
    table deliberately kept half-size)."""
    for param in module.parameters():
        if param is not keep and param.is_floating_point():
            param.data = param.data.float()
    for child in module.modules():
        for key, buffer in child.named_buffers(recurse=False):
            if buffer.is_floating_point():
                child._buffers[key] = buffer.float()


def weight_bytes(model: nn.Module, *, per_token: bool = False) -> int:
    """Bytes of the model's distinct weights: float parameters (a tied matrix counted once) plus
    the packed half-size layers. ``per_token``: only what decoding one token reads, i.e. without
    :class:`FloatEmbedding` tables, of which a token reads one row."""
    seen, total = set(), 0
    if per_token:
        seen = {m.weight.data_ptr() for m in model.modules() if isinstance(m, FloatEmbedding)}
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total + sum(m.nbytes for m in model.modules() if isinstance(m, HalfLinear))


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def release_file_pages(path: Path) -> int:
    """Give back the resident pages of this process's read-only mappings of files under ``path``
    (Linux; elsewhere a no-op), and trim the C heap. Returns the bytes of mappings advised.

    Loading a model memory-maps its safetensors file; every page read while converting stays
    resident (and counted in RSS) until the mapping goes, i.e. until the whole load is over. The
    mapping is file-backed and its tensors are only read, so dropping its pages loses nothing: a
    later read faults them in again from the file. (A page of a private mapping that had been
    written would revert to the file's bytes: call this only on files whose tensors are not
    modified in place.)"""
    libc = _libc()
    if libc is None:
        return 0
    prefix, advised = str(path), 0
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip().startswith(prefix):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
                        advised += end - start
        libc.malloc_trim(0)  # freed float copies go back to the OS, not only to malloc's free lists
    except (OSError, AttributeError) as exc:
        log.debug("could not release pages of %s: %s", path, exc)
    return advised
