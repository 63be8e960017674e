"""Shared pieces: results with targets, medians of repeats, peak memory, the report writers."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
RESULTS_MD = ROOT / "docs" / "benchmarks.md"


@dataclass
class Result:
    """One measured figure, optionally compared with a target (``value <= target`` unless ``higher``)."""

    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = False
    detail: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class Size:
    """How big each benchmark runs: ``quick`` for the test suite's smoke run."""

    repeats: int = 5
    quick: bool = False

    @classmethod
    def make(cls, *, quick: bool) -> Size:
        return cls(repeats=1, quick=True) if quick else cls()


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import torch

    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_before": round(os.getloadavg()[0], 2)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_report(results: list[Result], *, meta: dict, json_path: Path = RESULTS_JSON,
                 md_path: Path = RESULTS_MD, merge: bool = True) -> None:
    """Write the JSON (merged by name with earlier results unless ``merge=False``) and the table."""
    previous = {}
    if merge and json_path.is_file():
        try:
            previous = {r["name"]: r for r in json.loads(json_path.read_text()).get("results", [])}
        except (OSError, ValueError):
            previous = {}
    for r in results:
        previous[r.name] = {**r.to_dict(), "meta": meta}
    rows = list(previous.values())
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"results": rows}, indent=2) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python -m benchmarks` (see `benchmarks/`); each figure is the median of repeats, and",
             "ratios compare ours with a baseline measured in the same run on the same machine.", "",
             "| benchmark | value | target | result | measured |", "|---|---|---|---|---|"]
    lines += [table_row(r) for r in rows]
    lines += ["", "Details (baselines, repeats, sizes) are in `benchmarks/results.json`.", ""]
    return "\n".join(lines)


def table_row(r: dict) -> str:
    """One result (``Result.to_dict()`` plus ``meta``) as a Markdown table row."""
    op = "≥" if r.get("higher_is_better") else "≤"
    target = "" if r.get("target") is None else f"{op} {_fmt(r['target'])} {r['unit']}"
    verdict = {True: "met", False: "**not met**", None: "—"}[r.get("passed")]
    meta = r.get("meta", {})
    when = f"{meta.get('date', '')}, load {meta.get('load_before', '?')}"
    return f"| {r['name']} | {_fmt(r['value'])} {r['unit']} | {target} | {verdict} | {when} |"


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
