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

CONVERTER_VERSION = 1  # bump when the saved directory's contents change
SAVED_DTYPE = torch.bfloat16
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
    model.to(SAVED_DTYPE).save_pretrained(out)
    tokenizer.save_pretrained(out)
    _drop_quantization_config(out / "config.json")
    report(PROGRESS_TOTAL, PROGRESS_TOTAL)
    log.info("converted %s in %.1f s", spec.name, time.perf_counter() - started)


def _drop_quantization_config(config_path: Path) -> None:
    """Remove any GGUF quantisation entry so loading the directory reads plain safetensors."""
    config = json.loads(config_path.read_text())
    if "quantization_config" in config:
        del config["quantization_config"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
