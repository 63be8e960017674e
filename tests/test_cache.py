import hashlib

import pytest

from mmchat.cache import ConversionCache, cached_conversions, join_parts, verify_manifest
from mmchat.errors import MMChatError


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_join_parts_checks_sha256(tmp_path):
    parts = []
    for i, data in enumerate([b"abc" * 1000, b"", b"xyz"]):
        p = tmp_path / f"p{i}"
        p.write_bytes(data)
        parts.append(p)
    good = hashlib.sha256(b"abc" * 1000 + b"xyz").hexdigest()
    join_parts(parts, tmp_path / "joined", expected_sha256=good)
    assert (tmp_path / "joined").read_bytes() == b"abc" * 1000 + b"xyz"
    with pytest.raises(MMChatError, match="checksum"):
        join_parts(parts, tmp_path / "bad", expected_sha256="0" * 64)
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".bad*"))  # no half-written temp file left


def test_conversion_is_built_once_and_rebuilt_when_tampered(cache_dir):
    builds = []

    def build(out):
        builds.append(out)
        (out / "weights.bin").write_bytes(b"converted" * 100)
        (out / "sub").mkdir()
        (out / "sub" / "config.json").write_text("{}")

    cache = ConversionCache("toy", "ab" * 32, 1)
    first = cache.load_or_build(build)
    assert cache.load_or_build(build) == first and len(builds) == 1
    assert verify_manifest(first) and cached_conversions("toy") == [first]

    # Same size, different bytes: only the hash can tell.
    (first / "weights.bin").write_bytes(b"CONVERTED" * 100)
    assert not cache.verify()
    cache.load_or_build(build)
    assert len(builds) == 2 and (first / "weights.bin").read_bytes() == b"converted" * 100

    (first / "sub" / "config.json").unlink()
    assert not cache.verify()


def test_a_file_unchanged_since_its_check_is_not_hashed_again_and_a_changed_one_is(cache_dir, monkeypatch):
    import time

    from mmchat import cache as cache_mod

    hashed = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    monkeypatch.setattr(cache_mod, "SETTLED_S", 0.0)  # remember at once (the default waits 2 s)

    def build(out):
        (out / "weights.bin").write_bytes(b"converted" * 100)

    cache = ConversionCache("toy", "ef" * 32, 1)
    first = cache.load_or_build(build)
    hashed.clear()
    assert cache.verify() and hashed == ["weights.bin"]  # checked, and remembered
    assert cache.verify() and cache.verify() and hashed == ["weights.bin"]
    assert verify_manifest(first, full=True) and hashed == ["weights.bin"] * 2  # `models verify` always hashes
    time.sleep(0.05)  # past one step of the clock that stamps the file's change time
    (first / "weights.bin").write_bytes(b"CONVERTED" * 100)  # same size, other bytes
    assert not cache.verify() and hashed[-1] == "weights.bin"


def test_a_file_changed_just_before_its_check_is_hashed_again_next_time(cache_dir, monkeypatch):
    from mmchat import cache as cache_mod

    hashed = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    cache = ConversionCache("toy", "12" * 32, 1)
    cache.load_or_build(lambda out: (out / "weights.bin").write_bytes(b"x" * 100))
    hashed.clear()
    assert cache.verify() and cache.verify() and len(hashed) == 2  # written < SETTLED_S ago: not remembered


def test_failed_build_leaves_no_directory(cache_dir):
    cache = ConversionCache("toy", "cd" * 32, 1)

    def build(out):
        (out / "partial").write_bytes(b"x")
        raise RuntimeError("conversion crashed")

    with pytest.raises(RuntimeError):
        cache.load_or_build(build)
    assert not cache.directory.exists()
    assert list(cache.directory.parent.iterdir()) == []


def test_a_new_converter_version_replaces_the_old_conversion(cache_dir):
    def build(out):
        (out / "weights.bin").write_bytes(b"w")

    old = ConversionCache("toy", "ab" * 32, 1).load_or_build(build)
    other_source = ConversionCache("toy", "ef" * 32, 1).load_or_build(build)
    new = ConversionCache("toy", "ab" * 32, 2).load_or_build(build)
    assert new.is_dir() and not old.exists()
    assert other_source.is_dir()  # another source's conversion is not this one's to remove
