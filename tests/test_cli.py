"""The command line as a user runs it: a real subprocess, real exit codes and messages."""

import json
import os
import subprocess
import sys

import pytest

from mmchat import __version__


def mmchat(*args, env=None, input=None, timeout=600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mmchat.cli", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout)


def test_version():
    result = mmchat("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"mmchat {__version__}"


def test_no_display_says_so_in_one_line_and_points_to_terminal_chat():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "mmchat.cli"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no display" in result.stderr and "mmchat chat" in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_json_reports_paths_models_and_features(data_dir):
    result = mmchat("doctor", "--json", env={"MMCHAT_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["paths"]["data"] == str(data_dir)
    names = {m["name"]: m for m in report["models"]}
    assert names["qwen2.5-coder-0.5b-instruct"]["default"] and names["qwen2.5-coder-0.5b-instruct"]["role"] == "llm"
    assert names["clip-vit-b-32"]["state"] in ("untrained (random init)", "fetched")
    for feature in ("display", "microphone", "qt"):
        assert set(report["features"][feature]) == {"ok", "reason"} and report["features"][feature]["reason"]


def test_doctor_says_the_apps_chat_server_and_whether_a_key_is_at_hand_never_the_key(data_dir):
    from mmchat import settings

    settings.save(settings.Settings(server_url="http://10.1.2.3:8000"))
    result = mmchat("doctor", env={"MMCHAT_DATA_DIR": str(data_dir), "MMCHAT_API_KEY": "sk-secret-1234"})
    assert result.returncode == 0, result.stderr
    assert "the app chats on the server http://10.1.2.3:8000" in result.stdout and "API key found" in result.stdout
    assert "sk-secret-1234" not in result.stdout + result.stderr


def test_models_list_and_verify():
    listed = mmchat("models", "list", "--json")
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)
    roles = {r["role"] for r in rows}
    assert {"llm", "asr+audio-encoder", "image-encoder", "text-embedder"} <= roles
    for row in rows:
        assert row["licence"] and row["size_mb"] > 0 and row["source"]
    verified = mmchat("models", "verify", "minilm-l6")
    assert verified.returncode == 0 and "ok" in verified.stdout


def test_unknown_model_is_a_clean_error():
    result = mmchat("models", "verify", "no-such-model")
    assert result.returncode == 1
    assert "Unknown model 'no-such-model'" in result.stderr and "Traceback" not in result.stderr


def test_missing_image_is_a_clean_error_and_nothing_is_stored(data_dir, tmp_path):
    result = mmchat("chat", "--once", "what is this?", "--image", str(tmp_path / "nope.png"),
                    env={"MMCHAT_DATA_DIR": str(data_dir)})
    assert result.returncode == 1, result.stderr
    assert "nope.png" in result.stderr and "Traceback" not in result.stderr
    history = mmchat("history", env={"MMCHAT_DATA_DIR": str(data_dir)})
    assert "what is this" not in history.stdout


def test_a_bug_in_a_command_leaves_a_crash_report_and_says_where(monkeypatch, capsys, data_dir):
    from mmchat import cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_cmd_history", broken)
    assert cli.main(["history"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    (report,) = (data_dir / "crash-reports").glob("crash-*.txt")
    assert "unexpected error (RuntimeError: boom)" in err and str(report) in err and "Traceback" not in err
    assert 'raise RuntimeError("boom")' in report.read_text()


def test_models_list_gives_each_chat_models_size_ram_need_and_whether_it_fits(monkeypatch, tmp_path):
    from mmchat import doctor, probe

    monkeypatch.setenv("MMCHAT_CACHE_DIR", str(tmp_path))  # nothing fetched
    monkeypatch.setattr(probe, "memory", lambda: probe.Memory(total=8_000_000_000, available=3_000_000_000))
    rows = {r["name"]: r for r in doctor.model_rows()}
    seven, small = rows["qwen2.5-7b-instruct-q4"], rows["qwen2.5-1.5b-instruct-q4"]
    assert seven["size_bytes"] == 4_683_073_632 and seven["ram_need_mb"] == 5690 and seven["fits_ram"] is False
    assert small["ram_need_mb"] == 1889 and small["fits_ram"] is True
    assert seven["state"] == "not fetched" and seven["fetched"] is False
    assert rows["qwen2.5-coder-0.5b-instruct"]["fetched"] is None  # bundled
    assert rows["whisper-base"]["ram_need_mb"] is None and rows["whisper-base"]["fits_ram"] is None
    monkeypatch.setattr(probe, "memory", lambda: probe.Memory(total=8_000_000_000, available=None))
    assert {r["name"]: r for r in doctor.model_rows()}["qwen2.5-7b-instruct-q4"]["fits_ram"] is True  # the total

    listed = mmchat("models", "list", env={"MMCHAT_CACHE_DIR": str(tmp_path)})
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert "RAM need" in header and "fits" in header
    [row] = [line for line in lines if line.startswith("qwen2.5-7b-instruct-q4 ")]
    assert "not fetched" in row and "4683 MB" in row and "5690 MB" in row
    assert "KV cache of 8192 positions" in listed.stdout and "GB of RAM available now" in listed.stdout
