"""CTranslate2 Whisper ``model.bin`` -> openai-whisper checkpoint (safetensors + dims JSON).

The binary layout is the one ctranslate2 writes in ``python/ctranslate2/specs/model_spec.py``
(``_serialize``, binary version 6): a header, then each variable as name, shape, dtype id, byte
count and raw little-endian data, then aliases (shared variables, e.g. the output projection tied
to the token embedding). Names follow ``specs/whisper_spec.py`` and the transformers converter:
self-attention Q/K/V are fused into one ``linear_0``, cross-attention K/V into ``linear_1``.
Nothing is scaled or transposed for Whisper; weights are float16 in the bundled model.

Every tensor is checked against the architecture and written once, tensor by tensor, into an
openai-whisper state dict (``ModelDimensions`` names) kept at the source precision.
"""

from __future__ import annotations

import json
import re
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from mmchat import cache, registry
from mmchat.encoders.whisper_model import ModelDimensions
from mmchat.errors import MMChatError

CONVERTER_VERSION = 1  # bump when the checkpoint written here changes
WEIGHTS_FILE = "model.safetensors"
DIMS_FILE = "dims.json"
CT2_BINARY_VERSIONS = (5, 6)  # the layouts this reader understands (identical for our needs)
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # ctranslate2 type ids
GELU = 3  # ctranslate2 Activation.GELU

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Entry:
    shape: tuple[int, ...]
    dtype: str
    offset: int  # of the raw data in the file, bytes
    nbytes: int


class CT2Model:
    """Random access to the variables of a CTranslate2 ``model.bin`` (read lazily, aliases resolved)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, _Entry] = {}
        self.aliases: dict[str, str] = {}
        try:
            self._read_index()
        except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
            raise MMChatError(f"{path.name} is not a readable CTranslate2 model ({exc}).") from exc

    def _read_index(self) -> None:
        with open(self.path, "rb") as f:
            def read(fmt: str):
                return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

            def read_string() -> str:
                return f.read(read("H"))[:-1].decode("utf-8")

            version = read("I")
            if version not in CT2_BINARY_VERSIONS:
                raise ValueError(f"binary version {version}, expected one of {CT2_BINARY_VERSIONS}")
            self.spec_name, self.revision = read_string(), read("I")
            for _ in range(read("I")):
                name = read_string()
                shape = tuple(read("I") for _ in range(read("B")))
                dtype, nbytes = _DTYPES[read("B")], read("I")
                self.entries[name] = _Entry(shape, dtype, f.tell(), nbytes)
                f.seek(nbytes, 1)
            for _ in range(read("I")):
                alias = read_string()
                self.aliases[alias] = read_string()

    def resolve(self, name: str) -> str:
        return self.aliases.get(name, name)

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self.entries

    def array(self, name: str) -> torch.Tensor:
        """The variable ``name`` as a tensor in its stored dtype (bfloat16 stays bfloat16)."""
        entry = self.entries[self.resolve(name)]
        with open(self.path, "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.nbytes)
        if len(raw) != entry.nbytes:
            raise MMChatError(f"{self.path.name} is truncated (variable {name}).")
        if entry.dtype == "bfloat16":
            data = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
        else:
            data = torch.from_numpy(np.frombuffer(raw, dtype="<" + np.dtype(entry.dtype).str[1:]).copy())
        return data.reshape(entry.shape)

    def scalar(self, name: str) -> int:
        return int(self.array(name).reshape(-1)[0])

    def weight(self, name: str) -> torch.Tensor:
        """A floating weight; int8 weights are dequantised with their ``weight_scale``."""
        value = self.array(name)
        if value.dtype == torch.int8:
            scale_name = name.rsplit("/", 1)[0] + "/weight_scale"
            scale = self.array(scale_name).float()
            value = value.float() / scale.reshape(-1, *([1] * (value.dim() - 1)))
        if not value.is_floating_point():
            raise MMChatError(f"{name} has unsupported type {value.dtype} in {self.path.name}.")
        return value


def dims_of(model: CT2Model) -> ModelDimensions:
    """Architecture sizes from the tensor shapes and stored head counts; checks the format."""
    if model.spec_name != "WhisperSpec":
        raise MMChatError(f"{model.path.name} is a {model.spec_name}, not a Whisper model.")
    _expect(model, "decoder/pre_norm", 1)
    _expect(model, "decoder/activation", GELU)
    _expect(model, "decoder/scale_embeddings", 0)
    n_layers = [_count_layers(model, part) for part in ("encoder", "decoder")]
    n_vocab, n_text_state = model.entries["decoder/embeddings/weight"].shape
    n_audio_ctx, n_audio_state = model.entries["encoder/position_encodings/encodings"].shape
    return ModelDimensions(
        n_mels=model.entries["encoder/conv1/weight"].shape[1],
        n_audio_ctx=n_audio_ctx, n_audio_state=n_audio_state,
        n_audio_head=model.scalar("encoder/num_heads"), n_audio_layer=n_layers[0],
        n_vocab=n_vocab, n_text_ctx=model.entries["decoder/position_encodings/encodings"].shape[0],
        n_text_state=n_text_state, n_text_head=model.scalar("decoder/num_heads"),
        n_text_layer=n_layers[1],
    )


def _count_layers(model: CT2Model, part: str) -> int:
    return len({m.group(1) for name in model.entries if (m := re.match(rf"{part}/layer_(\d+)/", name))})


def _expect(model: CT2Model, name: str, value: int) -> None:
    if name in model and model.scalar(name) != value:
        raise MMChatError(f"{model.path.name}: {name} is {model.scalar(name)}, expected {value}; "
                          "this Whisper variant is not supported.")


def _block_names(ct2: str, ours: str, *, cross: bool) -> list[tuple[str, str, int, int]]:
    """(ct2 name, openai name, split index, split count) for one residual attention block."""
    names = [(f"{ct2}/self_attention/linear_0/weight", f"{ours}.attn.{p}.weight", i, 3)
             for i, p in enumerate(("query", "key", "value"))]
    # The key bias is dropped: openai's key has none, and q.(k + b) shifts every score of a query
    # by the same amount, which softmax ignores, so this is exact.
    names += [(f"{ct2}/self_attention/linear_0/bias", f"{ours}.attn.{p}.bias", i, 3)
              for i, p in ((0, "query"), (2, "value"))]
    names += _linear(f"{ct2}/self_attention/linear_1", f"{ours}.attn.out")
    names += _norm(f"{ct2}/self_attention/layer_norm", f"{ours}.attn_ln")
    if cross:
        names += _linear(f"{ct2}/attention/linear_0", f"{ours}.cross_attn.query")
        names += [(f"{ct2}/attention/linear_1/weight", f"{ours}.cross_attn.{p}.weight", i, 2)
                  for i, p in enumerate(("key", "value"))]
        names += [(f"{ct2}/attention/linear_1/bias", f"{ours}.cross_attn.value.bias", 1, 2)]
        names += _linear(f"{ct2}/attention/linear_2", f"{ours}.cross_attn.out")
        names += _norm(f"{ct2}/attention/layer_norm", f"{ours}.cross_attn_ln")
    names += _linear(f"{ct2}/ffn/linear_0", f"{ours}.mlp.0")
    names += _linear(f"{ct2}/ffn/linear_1", f"{ours}.mlp.2")
    names += _norm(f"{ct2}/ffn/layer_norm", f"{ours}.mlp_ln")
    return names


def _linear(ct2: str, ours: str) -> list[tuple[str, str, int, int]]:
    return [(f"{ct2}/weight", f"{ours}.weight", 0, 1), (f"{ct2}/bias", f"{ours}.bias", 0, 1)]


def _norm(ct2: str, ours: str) -> list[tuple[str, str, int, int]]:
    return [(f"{ct2}/gamma", f"{ours}.weight", 0, 1), (f"{ct2}/beta", f"{ours}.bias", 0, 1)]


def name_map(dims: ModelDimensions) -> list[tuple[str, str, int, int]]:
    """Every openai-whisper state-dict entry with the CTranslate2 variable (and split) it comes from."""
    names = _linear("encoder/conv1", "encoder.conv1") + _linear("encoder/conv2", "encoder.conv2")
    names.append(("encoder/position_encodings/encodings", "encoder.positional_embedding", 0, 1))
    for i in range(dims.n_audio_layer):
        names += _block_names(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    names += _norm("encoder/layer_norm", "encoder.ln_post")
    names.append(("decoder/embeddings/weight", "decoder.token_embedding.weight", 0, 1))
    names.append(("decoder/position_encodings/encodings", "decoder.positional_embedding", 0, 1))
    for i in range(dims.n_text_layer):
        names += _block_names(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    names += _norm("decoder/layer_norm", "decoder.ln")
    return names


def convert_ct2(source: Path, out_dir: Path, *, progress: Progress | None = None) -> ModelDimensions:
    """Write ``model.safetensors`` and ``dims.json`` for the CTranslate2 model at ``source``."""
    model = CT2Model(source)
    dims = dims_of(model)
    projection = "decoder/projection/weight"
    if model.resolve(projection) != "decoder/embeddings/weight" and projection in model:
        if not torch.equal(model.weight(projection), model.weight("decoder/embeddings/weight")):
            raise MMChatError("This Whisper model has an untied output projection (not supported).")
    names = name_map(dims)
    state: dict[str, torch.Tensor] = {}
    with tqdm(total=len(names), desc="converting whisper", unit="tensor", file=sys.stderr,
              leave=False, disable=None) as bar:
        for done, (ct2_name, ours, index, count) in enumerate(names, start=1):
            if ct2_name not in model:
                raise MMChatError(f"{source.name} has no variable {ct2_name}; not a Whisper model?")
            value = model.weight(ct2_name)
            state[ours] = value.chunk(count, dim=0)[index].contiguous() if count > 1 else value
            bar.update(1)
            if progress:
                progress(done, len(names))
    _check_shapes(state, dims)
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "openai-whisper"})
    (out_dir / DIMS_FILE).write_text(json.dumps(asdict(dims), indent=2))
    return dims


def _check_shapes(state: dict[str, torch.Tensor], dims: ModelDimensions) -> None:
    expected = {
        "encoder.conv1.weight": (dims.n_audio_state, dims.n_mels, 3),
        "encoder.conv2.weight": (dims.n_audio_state, dims.n_audio_state, 3),
        "encoder.positional_embedding": (dims.n_audio_ctx, dims.n_audio_state),
        "encoder.blocks.0.attn.key.weight": (dims.n_audio_state, dims.n_audio_state),
        "decoder.blocks.0.cross_attn.value.weight": (dims.n_text_state, dims.n_audio_state),
        "decoder.blocks.0.mlp.0.weight": (4 * dims.n_text_state, dims.n_text_state),
        "decoder.positional_embedding": (dims.n_text_ctx, dims.n_text_state),
    }
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise MMChatError(f"Unexpected shape {tuple(state[name].shape)} for {name} "
                              f"(expected {shape}); the Whisper model is not supported.")


@dataclass(frozen=True)
class WhisperSource:
    """Where a Whisper model's CTranslate2 files are: bundled packages or a fetched hub copy."""

    name: str
    parts: tuple[Path, ...]  # concatenated in order, they are model.bin
    sha256: str  # of model.bin (the registry's, or the checksum recorded when it was fetched)
    config: Path
    tokenizer: Path


def locate_source(name: str) -> WhisperSource:
    """The source files of registry model ``name``, or :class:`MMChatError` saying how to get them."""
    spec = registry.get(name)
    if spec.role is not registry.Role.ASR or spec.source_format != "ctranslate2":
        raise MMChatError(f"{name} is not a CTranslate2 Whisper model.")
    if spec.bundled:
        return WhisperSource(name, tuple(spec.locate_parts()), spec.sha256 or "",
                             spec.locate_extra("data/config.json"), spec.locate_extra("data/tokenizer.json"))
    from mmchat import download

    if not download.is_fetched(name):
        raise MMChatError(f"{name} has not been downloaded.", hint=f"Fetch it first: mmchat models fetch {name}")
    directory = download.hub_dir(name)
    manifest = json.loads((directory / download.MANIFEST).read_text())
    return WhisperSource(name, (directory / "model.bin",), manifest["files"]["model.bin"]["checksum"],
                         directory / "config.json", directory / "tokenizer.json")


def converted_dir(name: str, *, progress: Progress | None = None) -> Path:
    """The verified cache directory holding the openai-whisper checkpoint for registry ``name``."""
    source = locate_source(name)

    def build(out_dir: Path) -> None:
        if len(source.parts) == 1:  # a fetched model.bin, verified when it was downloaded
            convert_ct2(source.parts[0], out_dir, progress=progress)
            return
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".ct2-") as tmp:
            joined = Path(tmp) / "model.bin"
            cache.join_parts(source.parts, joined, expected_sha256=source.sha256, desc=f"joining {name}")
            convert_ct2(joined, out_dir, progress=progress)

    conversion = cache.ConversionCache(name, source.sha256, CONVERTER_VERSION)
    return conversion.load_or_build(build)
