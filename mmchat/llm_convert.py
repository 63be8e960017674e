"""Turn a registry LLM into a Hugging Face model directory we can load in seconds.

Bundled GGUF models are joined from their package parts, de-quantised by transformers once and
saved as bf16 safetensors plus tokenizer files in the verified :class:`~mmchat.cache.ConversionCache`.
Downloaded hub models already are HF directories under ``models_dir()/<name>/hub``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from mmchat import paths
from mmchat.cache import ConversionCache, Progress, join_parts
from mmchat.errors import MMChatError
from mmchat.registry import ModelSpec

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2  # bump when the saved directory's contents change (2: duplicate lm_head tied)
SAVED_DTYPE = torch.bfloat16
# An output matrix this close to the input embeddings is the same matrix quantised twice by the GGUF
# exporter (Qwen2.5-0.5B is trained with tied embeddings; its GGUF stores both, differing by ≤ 0.008).
TIE_TOLERANCE = 0.02
GGUF_NAME = "model.gguf"
# Share of the progress bar per stage (joining is measured in bytes, the rest is opaque).
_JOIN_SHARE, _LOAD_SHARE, _SAVE_SHARE = 200, 700, 100
PROGRESS_TOTAL = _JOIN_SHARE + _LOAD_SHARE + _SAVE_SHARE


def model_dir(spec: ModelSpec, *, progress: Progress | None = None) -> Path:
    """A directory ``from_pretrained`` can load: the cached conversion, or the downloaded hub copy."""
    if spec.bundled:
        if spec.source_format != "gguf":
            raise ValueError(f"{spec.name}: cannot convert {spec.source_format!r} into an LLM")
        cache = ConversionCache(spec.name, spec.sha256 or "", CONVERTER_VERSION)
        return cache.load_or_build(lambda out: convert_gguf(spec, out, progress=progress))
    if spec.source_format == "gguf":
        raise MMChatError(f"{spec.name} runs on llama.cpp only: mmchat makes no torch copy of a fetched GGUF, "
                          "and training fusion needs one.",
                          hint="Train fusion for a bundled model or a Hugging Face download instead.")
    return hub_dir(spec)


def hub_dir(spec: ModelSpec) -> Path:
    path = paths.models_dir() / spec.name / "hub"
    if not (path / "config.json").is_file():
        raise MMChatError(f"The model {spec.name} has not been downloaded.",
                          hint=f"Fetch it with: mmchat models fetch {spec.name}")
    return path


def convert_gguf(spec: ModelSpec, out: Path, *, progress: Progress | None = None) -> None:
    """Join ``spec``'s GGUF parts, de-quantise, and save bf16 safetensors + tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.perf_counter()
    report = progress or (lambda done, total: None)
    with tempfile.TemporaryDirectory(dir=paths.cache_dir(), prefix=".gguf-") as tmp:
        gguf = Path(tmp) / GGUF_NAME
        join_parts(spec.locate_parts(), gguf, expected_sha256=spec.sha256, desc=f"joining {spec.name}",
                   progress=lambda done, total: report(done * _JOIN_SHARE // max(total, 1), PROGRESS_TOTAL))
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=GGUF_NAME)
        # Unpacked to dense bf16 at load (no GGUF matmul kernels here; dense is what we save).
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=GGUF_NAME, dtype=SAVED_DTYPE, quantization_config=GgufConfig(dequantize=True))
        report(_JOIN_SHARE + _LOAD_SHARE, PROGRESS_TOTAL)
    # The weights are plain tensors now; saving must not try to re-quantise them.
    model.hf_quantizer = None
    tie_duplicate_output(model)
    model.to(SAVED_DTYPE).save_pretrained(out)
    tokenizer.save_pretrained(out)
    _drop_quantization_config(out / "config.json")
    report(PROGRESS_TOTAL, PROGRESS_TOTAL)
    log.info("converted %s in %.1f s", spec.name, time.perf_counter() - started)


def tie_duplicate_output(model) -> bool:
    """Tie an untied output matrix that duplicates the input embeddings: one copy fewer in memory
    (136M parameters, 545 MB in float32, for Qwen2.5-0.5B). True if it tied them."""
    inputs, outputs = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if model.config.tie_word_embeddings or inputs.shape != outputs.shape:
        return False
    with torch.no_grad():
        gap = float((inputs.float() - outputs.float()).abs().max())
    if gap > TIE_TOLERANCE:
        return False
    model.get_output_embeddings().weight = inputs
    model.config.tie_word_embeddings = True
    log.info("tied the output matrix to the input embeddings (max difference %.4f)", gap)
    return True


def _drop_quantization_config(config_path: Path) -> None:
    """Remove any GGUF quantisation entry so loading the directory reads plain safetensors."""
    config = json.loads(config_path.read_text())
    if "quantization_config" in config:
        del config["quantization_config"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
