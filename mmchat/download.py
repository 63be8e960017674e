"""Fetching optional model weights from the Hugging Face hub, verified and atomic.

Only registry entries with a ``hub_id`` can be fetched, and only when the user asks (``mmchat models
fetch NAME``, or the app's button); nothing in mmchat downloads on its own. The files land in
``<models>/<name>/hub/``: they are downloaded into ``<models>/<name>/.hub.partial/``, each checked
against the checksum the hub publishes (the sha256 of an LFS file, the git blob sha1 of a small
file), then the directory is renamed into place with a manifest. An interrupted download resumes
from the partial directory; a file with a wrong checksum throws the partial directory away.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from mmchat import paths, registry
from mmchat.cache import CHUNK_BYTES
from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

HUB_SUBDIR = "hub"  # <models>/<name>/hub holds a fetched model
PARTIAL_SUBDIR = ".hub.partial"  # where a fetch in progress downloads to
MANIFEST = "mmchat-fetch.json"  # written last, inside the fetched directory
METADATA_TIMEOUT_S = 20  # per metadata request
OFFLINE_HINT = "mmchat works offline without this model; try again when you are online."

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says about one file at one commit."""

    filename: str
    size: int
    checksum: str  # sha256 hex (LFS files) or git blob sha1 hex (small files)
    commit: str


class HubUnreachable(Exception):
    """The hub could not be contacted (no network, offline mode, timeout)."""


class HubMissing(Exception):
    """The hub answered, but the repository, revision or file is not there."""


class Hub(Protocol):
    """The two hub operations fetching needs (the tests substitute a fake)."""

    def stat(self, repo_id: str, filename: str, *, revision: str) -> RemoteFile: ...

    def download(self, repo_id: str, filename: str, *, revision: str, dest_dir: Path,
                 on_bytes: Callable[[int], None]) -> Path: ...


def hub_dir(name: str) -> Path:
    """Where a fetched model's files live (it may not exist yet)."""
    return paths.models_dir() / name / HUB_SUBDIR


def is_fetched(name: str) -> bool:
    """True when ``name`` was fetched completely: manifest present, every file at its recorded size."""
    spec = registry.get(name)
    directory = hub_dir(name)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("hub_id") != spec.hub_id or not set(spec.hub_files) <= set(files):
            return False
        return all((directory / f).stat().st_size == files[f]["size"] for f in files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def verify_fetched(name: str) -> bool:
    """Full check of a fetched model: every file matches the checksum recorded at download."""
    if not is_fetched(name):
        return False
    directory = hub_dir(name)
    files = json.loads((directory / MANIFEST).read_text())["files"]
    return all(file_checksum(directory / f, kind=_checksum_kind(meta["checksum"])) == meta["checksum"]
               for f, meta in files.items())


def fetch_model(name: str, *, progress: Progress | None = None, hub: Hub | None = None) -> Path:
    """Download, verify and install ``name``'s hub files; returns :func:`hub_dir`.

    ``progress`` gets (bytes done, bytes total) as the download runs; without it a tqdm bar is shown
    on a terminal. ``hub`` defaults to the real Hugging Face hub.
    """
    spec = registry.get(name)
    if not spec.hub_id or not spec.hub_files:
        raise MMChatError(f"{name} is not a downloadable model (it is bundled or has no hub source).")
    hub = hub or HuggingFaceHub()
    remote = _stat_all(hub, spec.hub_id, spec.hub_files)
    partial = paths.models_dir() / name / PARTIAL_SUBDIR
    try:
        partial.mkdir(parents=True, exist_ok=True)
        _download_all(hub, spec.hub_id, remote, partial, progress=progress)
        manifest = {"name": name, "hub_id": spec.hub_id, "commit": remote[0].commit,
                    "files": {r.filename: asdict(r) for r in remote}}
        shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume bookkeeping
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _install(partial, hub_dir(name))
    except OSError as exc:
        raise MMChatError(f"Could not save {name} under {partial.parent}: {exc.strerror or exc}.",
                          hint="Check the free disk space and permissions of the cache folder.") from None
    log.info("fetched %s (%s @ %s)", name, spec.hub_id, remote[0].commit)
    return hub_dir(name)


def _stat_all(hub: Hub, repo_id: str, filenames: Sequence[str]) -> list[RemoteFile]:
    """Metadata for every file, pinned to the commit the first file resolved to."""
    try:
        first = hub.stat(repo_id, filenames[0], revision="main")
        rest = [hub.stat(repo_id, f, revision=first.commit) for f in filenames[1:]]
    except HubUnreachable as exc:
        raise MMChatError(f"Could not reach the model hub to fetch {repo_id} ({exc}).", hint=OFFLINE_HINT) from None
    except HubMissing as exc:
        raise MMChatError(f"The model hub has no {exc} in {repo_id}.",
                          hint="The repository may have moved; check the registry entry.") from None
    return [first, *rest]


def _download_all(hub: Hub, repo_id: str, remote: list[RemoteFile], partial: Path, *,
                  progress: Progress | None) -> None:
    total = sum(r.size for r in remote)
    done = 0
    with tqdm(total=total, desc=f"fetching {repo_id}", unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, leave=False, disable=True if progress else None) as bar:
        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            bar.update(n)
            if progress:
                progress(min(done, total), total)

        for r in remote:
            base = done
            try:
                path = hub.download(repo_id, r.filename, revision=r.commit, dest_dir=partial, on_bytes=on_bytes)
            except HubUnreachable as exc:
                raise MMChatError(f"Could not reach the model hub while fetching {repo_id}/{r.filename} ({exc}).",
                                  hint=OFFLINE_HINT + " The download resumes where it stopped.") from None
            except HubMissing as exc:
                raise MMChatError(f"The model hub has no {exc} in {repo_id}.") from None
            _verify(path, r, partial)
            bar.update(max(0, base + r.size - done))
            done = base + r.size  # a resumed or skipped file counts in full
            if progress:
                progress(done, total)


def _verify(path: Path, remote: RemoteFile, partial: Path) -> None:
    """Check one downloaded file against the hub's checksum; on mismatch discard the whole fetch."""
    size = path.stat().st_size if path.is_file() else -1
    if size == remote.size and file_checksum(path, kind=_checksum_kind(remote.checksum)) == remote.checksum:
        return
    shutil.rmtree(partial, ignore_errors=True)
    raise MMChatError(
        f"The downloaded {remote.filename} does not match the model hub's checksum "
        f"({size:,} bytes, expected {remote.size:,}); nothing was installed.",
        hint="Try again; if it keeps failing, the download is being altered on the way.",
    )


def _checksum_kind(checksum: str) -> str:
    if _SHA256.fullmatch(checksum):
        return "sha256"
    if _GIT_SHA1.fullmatch(checksum):
        return "git-sha1"
    raise MMChatError(f"The model hub gave an unrecognised checksum {checksum!r}; refusing an unverified file.")


def file_checksum(path: Path, *, kind: str) -> str:
    """``sha256`` of the content, or ``git-sha1`` (sha1 of ``b"blob <size>\\0" + content``, git's blob id)."""
    if kind == "sha256":
        digest = hashlib.sha256()
    elif kind == "git-sha1":
        digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        raise ValueError(f"unknown checksum kind {kind!r}")
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _install(partial: Path, target: Path) -> None:
    """Rename the verified partial directory into place, replacing an older fetch."""
    old = target.with_name(f".{target.name}.old.{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)


class _ForwardingBar(tqdm):
    """A silent tqdm that forwards byte counts to ``on_bytes`` (set per download)."""

    on_bytes: Callable[[int], None] = staticmethod(lambda n: None)

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        self.on_bytes(int(n or 0))
        return super().update(n)


@dataclass(frozen=True)
class HuggingFaceHub:
    """The real hub, through ``huggingface_hub`` (imported only when a fetch runs)."""

    endpoint: str | None = None  # None: huggingface_hub's default (HF_ENDPOINT or huggingface.co)

    def stat(self, repo_id: str, filename: str, *, revision: str) -> RemoteFile:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=self.endpoint)
        with _hub_errors(filename):
            meta = get_hf_file_metadata(url, timeout=METADATA_TIMEOUT_S, endpoint=self.endpoint)
        if meta.size is None or not meta.etag or not meta.commit_hash:
            raise HubUnreachable(f"incomplete metadata for {filename}")
        return RemoteFile(filename=filename, size=meta.size, checksum=meta.etag.lower(), commit=meta.commit_hash)

    def download(self, repo_id: str, filename: str, *, revision: str, dest_dir: Path,
                 on_bytes: Callable[[int], None]) -> Path:
        from huggingface_hub import hf_hub_download

        bar = type("_Bar", (_ForwardingBar,), {"on_bytes": staticmethod(on_bytes)})
        with _hub_errors(filename):
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_dir=dest_dir,
                                        endpoint=self.endpoint, tqdm_class=bar))


@contextmanager
def _hub_errors(filename: str) -> Iterator[None]:
    """Map huggingface_hub / HTTP exceptions onto HubMissing and HubUnreachable."""
    from huggingface_hub import errors

    try:
        yield
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError) as exc:
        raise HubMissing(f"file {filename!r}") from exc
    except (ConnectionError, TimeoutError, *_http_error_types()) as exc:
        raise HubUnreachable(_first_line(exc)) from exc
    except OSError as exc:
        if exc.errno is not None:  # a local failure (disk full, permissions): not the network's fault
            raise
        raise HubUnreachable(_first_line(exc)) from exc  # e.g. a size check after a dropped connection


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _http_error_types() -> tuple[type[BaseException], ...]:
    """The HTTP client's base error (httpx2 for huggingface_hub 2.x, httpx for 1.x)."""
    for module in ("httpx2", "httpx"):
        try:
            return (__import__(module).HTTPError,)
        except (ImportError, AttributeError):
            continue
    return ()
