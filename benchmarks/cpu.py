"""CPU cost of speech: the daemon, `pacat` and a minimal sounddevice player side by side, each
measured per second of speech and held to stepping CPU quotas (a cgroup of its own) until the speech
breaks up.

CPU is read from /proc/<pid>/stat (user + system, all threads) around one utterance; "per second of
speech" divides it by the seconds of sound in the capture. A local engine's synthesis runs in the
daemon's process too (Piper) or in a child (espeak-ng): it is reported apart from the playback by
speaking the same request once more from the cache, which plays the same audio without synthesis.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import Daemon, Observer
from tests.sound import RATE, longest_gap, sound_regions

CLK_TCK = os.sysconf("SC_CLK_TCK")
QUOTAS = (10.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.75, 0.5)  # percent of one core, stepping down
PERIOD_US = 100_000  # the kernel's (and systemd CPUQuota='s) default period
GAP_LIMIT = 0.010  # seconds: a longer quiet inside the speech is a break-up


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (espeak-ng runs as a child)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


class CpuGroup:
    """A cgroup of our own with a CPU quota (v1 cpu.cfs_quota_us, or v2 cpu.max); removed on exit,
    its processes moved back to the root group first, also when the measurement failed."""

    def __init__(self) -> None:
        v1 = Path("/sys/fs/cgroup/cpu")
        name = f"mqtt-speaker-bench-{uuid.uuid4().hex[:8]}"
        if (v1 / "cpu.cfs_quota_us").exists():
            self.root, self.v2 = v1, False
        elif "cpu" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split():
            self.root, self.v2 = Path("/sys/fs/cgroup"), True
        else:
            raise RuntimeError("no cgroup CPU controller (cpu.cfs_quota_us or cpu.max) to hold the quota")
        self.path = self.root / name

    def __enter__(self) -> CpuGroup:
        if self.v2:
            with contextlib.suppress(OSError):  # usually enabled already
                (self.root / "cgroup.subtree_control").write_text("+cpu")
        self.path.mkdir()
        return self

    def limit(self, percent: float | None) -> None:
        """Hold the group to `percent` of one core (None: no limit)."""
        quota = -1 if percent is None else max(1000, int(PERIOD_US * percent / 100))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *_exc: object) -> None:
        for _ in range(50):
            pids = (self.path / "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(OSError):  # it may have exited meanwhile
                    (self.root / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                self.path.rmdir()
                return
            time.sleep(0.1)
        raise RuntimeError(f"could not remove {self.path}")


@dataclass
class Speech:
    cpu_percent: float  # of one core, per second of speech
    seconds: float  # of sound in the capture
    longest_gap_ms: float  # inside the speech

    def as_dict(self) -> dict[str, float]:
        return {"cpu_percent": self.cpu_percent, "seconds": self.seconds, "longest_gap_ms": self.longest_gap_ms}


def measure_speech(player: Callable[[], None], pid: int, capture: Any, quiet: float = 0.3) -> tuple[float, np.ndarray]:
    """Run `player()` (returns after the speech); CPU seconds it cost `pid`, and the captured signal."""
    capture.quiet_for(0.25)
    start = capture.samples()
    before = cpu_seconds(pid)
    player()
    capture.quiet_for(quiet, timeout=120)
    spent = cpu_seconds(pid) - before
    return spent, capture.signal(start)


def speech_figures(spent: float, signal: np.ndarray) -> Speech:
    regions = sound_regions(signal)
    if not regions:
        return Speech(float("nan"), 0.0, float("inf"))
    inner = signal[regions[0].start : regions[-1].end]
    seconds = inner.size / RATE
    return Speech(spent / seconds * 100, seconds, longest_gap(inner) * 1000)


def say_and_wait(observer: Observer, daemon: Daemon, payload: dict[str, Any]) -> Callable[[], None]:
    def run() -> None:
        request = {"id": f"cpu-{uuid.uuid4().hex[:8]}", **payload}
        observer.publish(daemon.topic("say"), json.dumps(request))
        event = daemon.wait_terminal(request["id"], timeout=120)
        if event["event_type"] != "finished":
            raise RuntimeError(f"the daemon did not finish: {event}")

    return run


def lowest_gapless_quota(
    add_to_group: Callable[[CpuGroup], None], speak: Callable[[], np.ndarray]
) -> tuple[float | None, dict[str, float]]:
    """Step the quota down until the speech breaks up; the lowest quota that was still gapless."""
    gaps: dict[str, float] = {}
    lowest: float | None = None
    with CpuGroup() as group:
        add_to_group(group)
        try:
            for quota in QUOTAS:
                group.limit(quota)
                signal = speak()
                regions = sound_regions(signal)
                gap = longest_gap(signal[regions[0].start : regions[-1].end]) if regions else float("inf")
                gaps[f"{quota:g}"] = gap * 1000
                if gap > GAP_LIMIT:
                    break
                lowest = quota
        finally:
            group.limit(None)
    return lowest, gaps


def write_wav_raw(samples: np.ndarray, directory: Path) -> Path:
    path = Path(tempfile.mkstemp(prefix="speech-", suffix=".raw", dir=directory)[1])
    path.write_bytes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def pacat(audio: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = ["pacat", "--playback", "--raw", "--format=s16le", f"--rate={RATE}", "--channels=1", str(audio)]
    return subprocess.Popen(args, env=env)


def minimal_player(audio: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.minimal", str(audio)], env=env)


@contextlib.contextmanager
def started(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
