"""Case counts for the reliability tests (imported by them; not a test module).

A test marked ``reliability`` is recorded in ``test-results/reliability.json`` with its outcome,
duration and the number of cases it ran: each call of :func:`count` adds cases (a kill of the
writer, a fuzzed input, a hypothesis example); a test that never counts ran one case.
``scripts/reliability_table.py`` renders that file as the table in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "test-results" / "reliability.json"

_current: dict | None = None  # the record of the reliability test now running


def count(n: int = 1, *, note: str | None = None) -> None:
    """Add ``n`` cases to the running test's record (a no-op outside a reliability test)."""
    if _current is not None:
        _current["cases"] = _current.get("cases", 0) + n
        if note:
            _current["note"] = note


def note(text: str) -> None:
    if _current is not None:
        _current["note"] = text


def begin(nodeid: str) -> None:
    global _current
    _current = {"test": nodeid}


def end() -> dict | None:
    global _current
    record, _current = _current, None
    return record


def save(records: list[dict]) -> None:
    """Merge ``records`` into the results file (by test id, newest wins)."""
    if not records:
        return
    try:
        merged = {r["test"]: r for r in json.loads(RESULTS.read_text())["tests"]}
    except (OSError, ValueError, KeyError, TypeError):
        merged = {}
    for record in records:
        merged[record["test"]] = record
    payload = {"updated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "tests": sorted(merged.values(), key=lambda r: r["test"])}
    try:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(RESULTS)
    except OSError as exc:  # a read-only checkout must not fail the test run
        warnings.warn(f"could not write {RESULTS}: {exc}", stacklevel=1)
