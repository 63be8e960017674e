"""Hub downloads, against a fake hub: verification, atomic install, offline errors. No network."""

import hashlib
import json
from pathlib import Path

import pytest

from mmchat import download, registry
from mmchat.download import HubMissing, HubUnreachable, RemoteFile, fetch_model, file_checksum, hub_dir, is_fetched
from mmchat.errors import MMChatError

NAME = "clip-vit-b-32"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_MIN_BYTES = 1_000  # the fake hub treats larger files as LFS (sha256 etag), like the real one


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(path))
    return path


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Serves ``files`` like the hub: metadata with checksums, downloads in chunks."""

    def __init__(self, files: dict[str, bytes], *, served: dict[str, bytes] | None = None,
                 unreachable_after: int | None = None, missing: tuple[str, ...] = ()) -> None:
        self.files = files
        self.served = {**files, **(served or {})}  # what downloads actually deliver
        self.unreachable_after = unreachable_after  # downloads that succeed before the network drops
        self.missing = missing
        self.stat_revisions: list[str] = []
        self.downloaded: list[tuple[str, str]] = []

    def stat(self, repo_id, filename, *, revision):
        if filename in self.missing:
            raise HubMissing(f"file {filename!r}")
        self.stat_revisions.append(revision)
        data = self.files[filename]
        checksum = hashlib.sha256(data).hexdigest() if len(data) >= LFS_MIN_BYTES else git_blob_sha1(data)
        return RemoteFile(filename=filename, size=len(data), checksum=checksum, commit=COMMIT)

    def download(self, repo_id, filename, *, revision, dest_dir, on_bytes):
        if self.unreachable_after is not None and len(self.downloaded) >= self.unreachable_after:
            raise HubUnreachable("connection reset")
        self.downloaded.append((filename, revision))
        data = self.served[filename]
        path = Path(dest_dir) / filename
        with open(path, "wb") as f:
            for start in range(0, len(data), 4096):
                f.write(data[start:start + 4096])
                on_bytes(len(data[start:start + 4096]))
        return path


def hub_files(seed: int = 0) -> dict[str, bytes]:
    spec = registry.get(NAME)
    files = {name: json.dumps({"file": name, "seed": seed}).encode() for name in spec.hub_files}
    files["model.safetensors"] = bytes(range(256)) * 400 + bytes([seed])  # "LFS" sized
    return files


def test_fetch_installs_verified_files_atomically():
    files = hub_files()
    hub = FakeHub(files)
    seen = []
    assert not is_fetched(NAME)
    path = fetch_model(NAME, progress=lambda done, total: seen.append((done, total)), hub=hub)
    assert path == hub_dir(NAME) and is_fetched(NAME)
    for name, data in files.items():
        assert (path / name).read_bytes() == data
    total = sum(map(len, files.values()))
    assert seen[-1] == (total, total) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert hub.stat_revisions[0] == "main" and set(hub.stat_revisions[1:]) == {COMMIT}
    assert {revision for _, revision in hub.downloaded} == {COMMIT}  # all files from one commit
    manifest = json.loads((path / download.MANIFEST).read_text())
    assert manifest["commit"] == COMMIT and set(manifest["files"]) == set(files)
    assert not (path.parent / download.PARTIAL_SUBDIR).exists()


@pytest.mark.parametrize("bad_file", ["model.safetensors", "config.json"])
def test_wrong_checksum_is_rejected_and_nothing_is_left(bad_file):
    files = hub_files()
    tampered = bytearray(files[bad_file])
    tampered[len(tampered) // 2] ^= 0xFF  # same size, different content
    with pytest.raises(MMChatError, match=f"{bad_file}.*checksum.*nothing was installed"):
        fetch_model(NAME, hub=FakeHub(files, served={bad_file: bytes(tampered)}))
    assert not hub_dir(NAME).exists() and not is_fetched(NAME)
    assert not (hub_dir(NAME).parent / download.PARTIAL_SUBDIR).exists()


def test_short_download_is_rejected():
    files = hub_files()
    with pytest.raises(MMChatError, match="checksum"):
        fetch_model(NAME, hub=FakeHub(files, served={"model.safetensors": files["model.safetensors"][:-10]}))
    assert not hub_dir(NAME).exists()


def test_failed_refetch_keeps_the_previous_install():
    fetch_model(NAME, hub=FakeHub(hub_files(seed=1)))
    newer = hub_files(seed=2)
    with pytest.raises(MMChatError):
        fetch_model(NAME, hub=FakeHub(newer, served={"model.safetensors": b"x" * len(newer["model.safetensors"])}))
    assert is_fetched(NAME)
    assert (hub_dir(NAME) / "model.safetensors").read_bytes() == hub_files(seed=1)["model.safetensors"]
    fetch_model(NAME, hub=FakeHub(newer))  # a good refetch replaces it
    assert (hub_dir(NAME) / "model.safetensors").read_bytes() == newer["model.safetensors"]


def test_unreachable_hub_is_a_user_error_and_resumable():
    files = hub_files()

    class Offline(FakeHub):
        def stat(self, *args, **kwargs):
            raise HubUnreachable("no network")

    with pytest.raises(MMChatError, match="Could not reach the model hub") as info:
        fetch_model(NAME, hub=Offline(files))
    assert "works offline" in str(info.value)

    with pytest.raises(MMChatError, match="while fetching"):
        fetch_model(NAME, hub=FakeHub(files, unreachable_after=3))
    assert not hub_dir(NAME).exists() and not is_fetched(NAME)
    assert len(list((hub_dir(NAME).parent / download.PARTIAL_SUBDIR).iterdir())) == 3  # kept to resume
    fetch_model(NAME, hub=FakeHub(files))
    assert is_fetched(NAME)


def test_missing_file_on_hub():
    with pytest.raises(MMChatError, match="no file 'vocab.json'"):
        fetch_model(NAME, hub=FakeHub(hub_files(), missing=("vocab.json",)))


def test_is_fetched_notices_damage():
    fetch_model(NAME, hub=FakeHub(hub_files()))
    weights = hub_dir(NAME) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    assert not is_fetched(NAME)
    fetch_model(NAME, hub=FakeHub(hub_files()))
    (hub_dir(NAME) / download.MANIFEST).write_text("{not json")
    assert not is_fetched(NAME)


def test_bundled_model_cannot_be_fetched():
    with pytest.raises(MMChatError, match="not a downloadable model"):
        fetch_model("minilm-l6", hub=FakeHub({}))
    with pytest.raises(MMChatError, match="Unknown model"):
        fetch_model("no-such-model")


def test_unrecognised_checksum_is_refused():
    class OddEtags(FakeHub):
        def stat(self, *args, **kwargs):
            remote = super().stat(*args, **kwargs)
            return RemoteFile(remote.filename, remote.size, "W/not-a-hash", remote.commit)

    with pytest.raises(MMChatError, match="unrecognised checksum"):
        fetch_model(NAME, hub=OddEtags(hub_files()))
    assert not hub_dir(NAME).exists()


def test_git_blob_checksum_matches_git(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    assert file_checksum(path, kind="git-sha1") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob
    path.write_bytes(b"hello\n")
    assert file_checksum(path, kind="git-sha1") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert file_checksum(path, kind="sha256") == hashlib.sha256(b"hello\n").hexdigest()


def test_real_hub_adapter_offline_mode_gives_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMChatError, match="Could not reach the model hub"):
        fetch_model(NAME)


def test_real_hub_adapter_unreachable_endpoint(monkeypatch):
    """A closed local port stands in for 'no internet' (nothing leaves the machine)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(MMChatError, match="Could not reach the model hub"):
        fetch_model(NAME, hub=download.HuggingFaceHub(endpoint="http://127.0.0.1:9"))
    assert not hub_dir(NAME).exists()
