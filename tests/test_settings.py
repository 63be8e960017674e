"""Settings: defaults, round trip, atomic write, and tolerance of damaged or hostile files."""

import json
import os

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from mmchat import settings as settings_mod
from mmchat.errors import MMChatError
from mmchat.settings import Settings, from_dict, load, save


def test_missing_file_gives_defaults(data_dir):
    loaded = load()
    assert loaded.settings == Settings()
    assert loaded.notice is None


def test_round_trip(data_dir):
    s = Settings(llm="smollm2-135m-instruct", temperature=0.2, seed=7, theme="dark", fusion_audio=False,
                 input_device="USB mic", voice_send_at_once=True, max_recording_s=30)
    save(s)
    assert load().settings == s
    assert json.loads((data_dir / "settings.json").read_text())["theme"] == "dark"


def test_save_leaves_no_temporary_files(data_dir):
    save(Settings())
    save(Settings(theme="light"))
    assert sorted(p.name for p in data_dir.iterdir()) == ["settings.json"]


def test_failed_write_keeps_the_old_file(data_dir, monkeypatch):
    save(Settings(theme="dark"))

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(settings_mod.os, "replace", broken_replace)
        with pytest.raises(MMChatError, match="No space left"):
            save(Settings(theme="light"))
    assert load().settings.theme == "dark"
    assert sorted(p.name for p in data_dir.iterdir()) == ["settings.json"]


def test_damaged_file_is_moved_aside_with_a_notice(data_dir):
    path = data_dir / "settings.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text('{"theme": "dark",')  # cut off mid-write by some other program
    loaded = load()
    assert loaded.settings == Settings()
    assert "damaged" in loaded.notice
    assert not path.exists()
    assert any(p.name.startswith("settings.json.broken-") for p in data_dir.iterdir())


def test_bad_values_fall_back_one_by_one():
    s = from_dict({"theme": "purple", "temperature": "hot", "top_k": 5, "max_new_tokens": 10**9,
                   "seed": 3.5, "fusion_image": 1, "read_aloud": True, "unknown": 1, "top_p": float("nan")})
    assert s.theme == "system"
    assert s.temperature == Settings().temperature
    assert s.top_k == 5
    assert s.max_new_tokens == Settings().max_new_tokens
    assert s.seed is None
    assert s.fusion_image is True  # 1 is not a bool
    assert s.read_aloud is True
    assert s.top_p == Settings().top_p


def test_int_valued_floats_are_accepted():
    assert from_dict({"max_new_tokens": 64.0, "temperature": 1}).max_new_tokens == 64
    assert isinstance(from_dict({"temperature": 1}).temperature, float)


def test_database_path_follows_the_data_folder(tmp_path, data_dir):
    assert Settings().database_path().parent == data_dir
    assert Settings(data_dir=str(tmp_path / "elsewhere")).database_path() == tmp_path / "elsewhere" / "mmchat.sqlite3"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=10)


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in settings_mod.dataclasses.fields(Settings)]) | st.text(),
                       json_values, max_size=8))
def test_any_json_object_loads_into_valid_settings(raw):
    s = from_dict(raw)
    assert s.theme in settings_mod.THEMES
    for name, (low, high) in settings_mod.RANGES.items():
        value = getattr(s, name)
        assert value is None or low <= value <= high
    for f in settings_mod.dataclasses.fields(Settings):
        default = getattr(Settings(), f.name)
        if isinstance(default, bool):
            assert isinstance(getattr(s, f.name), bool)


@hsettings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_on_disk_load_without_raising(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("s") / "settings.json"
    path.write_bytes(blob)
    loaded = load(path)
    assert isinstance(loaded.settings, Settings)
    assert os.path.exists(path) or loaded.notice
