"""The LLM runtimes: load a registry model, stream chat replies, splice media embeddings.

* :mod:`~mmchat.llm.config` — :class:`GenerationConfig` and :class:`GenerationStats`, for every runtime;
* :mod:`~mmchat.llm.base` — what the local runtimes share (:class:`ChatModel`, ...);
* :mod:`~mmchat.llm.llamacpp` — chat: llama.cpp on the GGUF as shipped;
* :mod:`~mmchat.llm.gguf` — finding a model's GGUF file, and opening it ahead of use;
* :mod:`~mmchat.llm.torch_runtime` — :class:`LLM`, transformers on a de-quantised copy, for fusion
  training;
* :mod:`~mmchat.llm.remote` — :class:`RemoteLLM`, a model served over an OpenAI-compatible API.

Importing this package is cheap (no torch): the names below come from their modules on first use,
so ``chat --once`` can start opening the model while torch is still importing.
"""

from __future__ import annotations

import importlib

__all__ = ["ChatModel", "GenerationConfig", "GenerationStats", "LLM", "MEDIA_PLACEHOLDER"]

MAX_CONTEXT_TOKENS = 8192  # cap on the prompt + reply window, for speed on CPU
PREFILL_CHUNK_TOKENS = 512  # prompt positions per forward pass (bounds attention memory)

_SUBMODULES = ("base", "config", "gguf", "llamacpp", "remote", "torch_runtime")


def __getattr__(name: str):
    # A submodule is imported by name, not looked up here: ``from mmchat.llm import gguf`` asks this
    # first, and trying base and torch_runtime would import torch for it.
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(name)
    for home in ("config", "base", "torch_runtime"):  # config first: it needs no torch
        module = importlib.import_module(f"{__name__}.{home}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
