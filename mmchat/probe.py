"""Probe what this machine offers, so each missing piece turns off just its feature with a reason.

Every probe returns a :class:`Probe` (``ok`` plus a sentence a user can act on) and never raises.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass


class OthersCpu:
    """How many CPUs other processes kept busy since the last reading (from /proc/stat's busy time
    less this process's own); None where /proc/stat is not there, or too soon after the last."""

    MIN_INTERVAL_S = 0.2

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        """(now, busy seconds of the CPUs this process may run on, this process's CPU seconds): only
        those CPUs, as a container's /proc/stat counts the whole host's."""
        try:
            allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
            with open("/proc/stat") as f:
                rows = [line.split() for line in f if line.startswith("cpu")]
            busy = 0
            for row in rows:
                if row[0] in allowed:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in row[1:9])
                    busy += user + nice + system + irq + softirq + steal
        except (OSError, ValueError, AttributeError):  # no /proc/stat, or no sched_getaffinity (not Linux)
            return None
        own = os.times()
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system

    def reading(self) -> float | None:
        """CPUs busy with other processes, on average, since the last reading (which this starts anew)."""
        now, last = self._read(), self._last
        if now is None or last is None or now[0] - last[0] < self.MIN_INTERVAL_S:
            return None
        self._last = now
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


def physical_cores() -> int:
    """Cores this process may run on, hyper-threads counted once (llama.cpp gains nothing from a
    core's second thread and loses when both fight over its caches)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count it as a core of its own
    return max(1, len(cores))


@dataclass(frozen=True)
class Memory:
    total: int  # bytes of physical RAM
    available: int | None  # bytes that programs can take now without swapping (None: unknown here)


def memory() -> Memory | None:
    """This machine's RAM: ``/proc/meminfo`` on Linux (MemAvailable counts the page cache it can drop),
    the physical pages elsewhere that have them; None where neither answers."""
    try:
        with open("/proc/meminfo") as f:
            fields = {key: int(value.split()[0]) * 1024 for key, value in (line.split(":", 1) for line in f)}
        return Memory(fields["MemTotal"], fields.get("MemAvailable"))
    except (OSError, ValueError, KeyError, IndexError):
        pass
    try:
        return Memory(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), None)
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return None


@dataclass(frozen=True)
class Probe:
    ok: bool
    reason: str  # why not, or what was found


def display() -> Probe:
    """Can a Qt window be shown? On Linux that needs X11, Wayland or an explicit Qt platform."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return Probe(True, f"Qt platform {platform!r} (QT_QPA_PLATFORM)")
    if not sys.platform.startswith("linux"):
        return Probe(True, f"{sys.platform} desktop")
    for var in ("WAYLAND_DISPLAY", "DISPLAY"):
        if os.environ.get(var):
            return Probe(True, f"{var}={os.environ[var]}")
    return Probe(False, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)")


def microphone() -> Probe:
    """Is there PortAudio and at least one input device?"""
    try:
        import sounddevice
    except OSError as exc:  # the Python package is there, the PortAudio library is not
        return Probe(False, f"PortAudio is not installed ({exc}); on Debian: apt install libportaudio2")
    except ImportError as exc:
        return Probe(False, f"the sounddevice package is missing ({exc})")
    try:
        devices = sounddevice.query_devices()
    except Exception as exc:  # PortAudio raises its own error types
        return Probe(False, f"PortAudio could not list audio devices ({exc})")
    inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
    if not inputs:
        return Probe(False, "no microphone: PortAudio found no input device")
    return Probe(True, f"{len(inputs)} input device(s), e.g. {inputs[0]['name']}")


def qt() -> Probe:
    # Found without importing it: the engine never loads Qt.
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("PySide6") is None:
        return Probe(False, "PySide6 is not installed")
    try:
        version = importlib.metadata.version("PySide6-Essentials")
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    return Probe(True, f"PySide6 {version}")


def bf16() -> Probe:
    """Does the CPU do bf16 matrix maths natively (AVX512-BF16 / AMX)? Decode is faster in bf16 there."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception as exc:
        return Probe(False, f"unknown ({exc})")
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pass
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return Probe(True, f"native bf16 ({capability})")
    return Probe(False, f"no native bf16 ({capability}); bf16 still works, emulated")
