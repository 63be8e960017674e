"""The fusion dataset format: ``samples.jsonl`` plus media files, its reader, validator and hash.

One JSON object per line::

    {"id": "img-000001", "modality": "image", "path": "images/img-000001.png",
     "caption": "a red circle in the centre of a white background",
     "qa": [{"q": "What colour is the shape?", "a": "red", "kind": "colour"}],
     "meta": {...}}

``modality`` is ``"image"`` or ``"audio"``; images carry an optional ``caption``, audio an optional
``transcript``; ``path`` is relative to the directory holding ``samples.jsonl`` (absolute paths
are accepted for hand-made datasets). A sample needs at least one QA pair or its caption /
transcript. This is also what users give ``mmchat train-fusion --data DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from mmchat.cache import sha256_file
from mmchat.errors import MMChatError

SAMPLES_FILE = "samples.jsonl"
MODALITIES = ("image", "audio")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".npy")
TEXT_FIELD = {"image": "caption", "audio": "transcript"}
KNOWN_KEYS = frozenset({"id", "modality", "path", "caption", "transcript", "qa", "meta"})
MAX_REPORTED_ERRORS = 10  # problems listed in one validation message
HASH_DOMAIN = b"mmchat-fusion-data-v1\0"

FORMAT_HINT = ('Each line must be a JSON object like {"id": "a1", "modality": "image", '
               '"path": "images/a1.png", "caption": "...", "qa": [{"q": "...", "a": "...", '
               '"kind": "colour"}]}.')


@dataclass(frozen=True)
class QA:
    q: str
    a: str
    kind: str  # "colour", "shape", "count", "position", "word", "transcript", "arithmetic", ...

    def to_dict(self) -> dict:
        return {"q": self.q, "a": self.a, "kind": self.kind}


@dataclass(frozen=True)
class Sample:
    """One line of ``samples.jsonl``; ``path`` is resolved to an absolute path when loaded."""

    id: str
    modality: str  # "image" | "audio"
    path: Path
    qa: tuple[QA, ...] = ()
    caption: str | None = None
    transcript: str | None = None
    meta: dict = field(default_factory=dict, hash=False)

    @property
    def text(self) -> str | None:
        """The caption of an image or the transcript of a clip."""
        return self.caption if self.modality == "image" else self.transcript

    def to_record(self, *, root: Path) -> dict:
        """The JSON object for ``samples.jsonl`` in ``root`` (``path`` made relative when inside)."""
        try:
            rel = self.path.relative_to(root).as_posix()
        except ValueError:
            rel = str(self.path)
        record: dict = {"id": self.id, "modality": self.modality, "path": rel}
        text_key = TEXT_FIELD[self.modality]
        if self.text is not None:
            record[text_key] = self.text
        record["qa"] = [qa.to_dict() for qa in self.qa]
        record["meta"] = self.meta
        return record


def write_samples(samples: list[Sample], directory: Path, *, name: str = SAMPLES_FILE) -> Path:
    """Write ``directory/name`` atomically (paths relative to ``directory``); byte-stable."""
    target = directory / name
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for sample in samples:
            f.write(json.dumps(sample.to_record(root=directory), ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    return target


def _samples_file(path: Path) -> Path:
    path = Path(path)
    file = path / SAMPLES_FILE if path.is_dir() else path
    if not file.is_file():
        raise MMChatError(f"No {SAMPLES_FILE} found at {path}.",
                          hint="Point at a dataset directory made by `mmchat make-fusion-data` "
                               f"or one holding your own {SAMPLES_FILE}. " + FORMAT_HINT)
    return file


def load_samples(path: Path) -> list[Sample]:
    """Parse a dataset directory (or its ``samples.jsonl``) without opening the media files.

    Raises :class:`MMChatError` naming the line of the first malformed record.
    """
    return [sample for _, sample in _read(_samples_file(path))]


def _read(file: Path) -> list[tuple[int, Sample]]:
    """(line number, sample) for every record of ``file``."""
    root = file.parent
    out: list[tuple[int, Sample]] = []
    seen: dict[str, int] = {}
    with open(file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                sample = _parse_line(line, root=root)
            except ValueError as exc:
                raise MMChatError(f"{file} line {line_no}: {exc}", hint=FORMAT_HINT) from None
            if sample.id in seen:
                raise MMChatError(f"{file} line {line_no}: id {sample.id!r} is already used on "
                                  f"line {seen[sample.id]}.", hint="Give every sample its own id.")
            seen[sample.id] = line_no
            out.append((line_no, sample))
    if not out:
        raise MMChatError(f"{file} holds no samples.", hint=FORMAT_HINT)
    return out


def _parse_line(line: str, *, root: Path) -> Sample:
    """One record; ``ValueError`` with a short reason when it is malformed."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; put extra fields under \"meta\"")
    sample_id = _string(obj, "id")
    modality = _string(obj, "modality")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be \"image\" or \"audio\", not {modality!r}")
    rel = _string(obj, "path")
    other = TEXT_FIELD["audio" if modality == "image" else "image"]
    if other in obj:
        raise ValueError(f"an {modality} sample has no {other!r} (use {TEXT_FIELD[modality]!r})")
    text = obj.get(TEXT_FIELD[modality])
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise ValueError(f"{TEXT_FIELD[modality]!r} must be a non-empty string")
    qa = _parse_qa(obj.get("qa", []))
    if not qa and text is None:
        raise ValueError(f"the sample has neither \"qa\" nor {TEXT_FIELD[modality]!r}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError("\"meta\" must be a JSON object")
    path = Path(rel) if Path(rel).is_absolute() else root / rel
    return Sample(id=sample_id, modality=modality, path=path, qa=qa,
                  caption=text if modality == "image" else None,
                  transcript=text if modality == "audio" else None, meta=meta)


def _string(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string" + ("" if key in obj else " (missing)"))
    return value


def _parse_qa(items: object) -> tuple[QA, ...]:
    if not isinstance(items, list):
        raise ValueError("\"qa\" must be a list of {\"q\", \"a\", \"kind\"} objects")
    out = []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict) or set(item) != {"q", "a", "kind"}:
            raise ValueError(f"qa item {n} must have exactly the keys \"q\", \"a\" and \"kind\"")
        if not all(isinstance(item[k], str) for k in ("q", "a", "kind")):
            raise ValueError(f"qa item {n}: \"q\", \"a\" and \"kind\" must be strings")
        if not item["a"].strip() or not item["kind"].strip():
            raise ValueError(f"qa item {n}: \"a\" and \"kind\" must not be empty")
        out.append(QA(q=item["q"], a=item["a"], kind=item["kind"]))
    return tuple(out)


def validate_dataset(directory: Path) -> list[Sample]:
    """Load ``directory`` and check every media file exists and is a readable image / audio clip.

    Returns the samples; raises one :class:`MMChatError` listing the first problems by line.
    """
    file = _samples_file(directory)
    records = _read(file)
    problems = []
    for line_no, sample in records:
        problem = _media_problem(sample)
        if problem:
            problems.append(f"line {line_no} ({sample.id}): {problem}")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED_ERRORS])
        more = len(problems) - MAX_REPORTED_ERRORS
        tail = f"\n  … and {more} more" if more > 0 else ""
        raise MMChatError(f"{file}: {len(problems)} sample(s) have unusable media files:\n  "
                          f"{shown}{tail}",
                          hint="Paths are relative to the folder holding samples.jsonl.")
    return [sample for _, sample in records]


def _media_problem(sample: Sample) -> str | None:
    """Why the sample's media file cannot be used, or None."""
    path = sample.path
    if not path.is_file():
        return f"missing file {path}"
    suffix = path.suffix.lower()
    allowed = IMAGE_SUFFIXES if sample.modality == "image" else AUDIO_SUFFIXES
    if suffix not in allowed:
        return f"{path.name}: an {sample.modality} must be one of {', '.join(allowed)}"
    try:
        if sample.modality == "image":
            with Image.open(path) as image:
                image.verify()
        elif suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.ndim != 1 or array.dtype.kind != "f" or array.size == 0:
                return f"{path.name}: a .npy clip must be a non-empty 1-D float array (16 kHz)"
        else:
            if sf.info(str(path)).frames == 0:
                return f"{path.name}: the audio file is empty"
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, RuntimeError,
            sf.LibsndfileError) as exc:
        return f"{path.name} is unreadable ({exc})"
    return None


def dataset_hash(directory: Path) -> str:
    """sha256 over ``samples.jsonl`` and every media file it names (sorted by path as written)."""
    file = _samples_file(directory)
    digest = hashlib.sha256(HASH_DOMAIN)
    digest.update(sha256_file(file).encode() + b"\n")
    media = {sample.to_record(root=file.parent)["path"]: sample.path for _, sample in _read(file)}
    for rel in sorted(media):
        if not media[rel].is_file():
            raise MMChatError(f"{file}: cannot hash the dataset, {media[rel]} is missing.")
        digest.update(rel.encode() + b"\0" + sha256_file(media[rel]).encode() + b"\n")
    return digest.hexdigest()
