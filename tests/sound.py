"""A private PulseAudio with a clocked pipe sink, `parec` captures of what it played, and their analysis."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

RATE = 44100
SINK = "testsink"


def parec_args(monitor: str) -> list[str]:
    """parec of a sink's monitor, mono (a sink of several channels is mixed down)."""
    return ["parec", "-d", monitor, "--format=s16le", f"--rate={RATE}", "--channels=1", "--raw", "--latency-msec=20"]


Signal = npt.NDArray[np.float64]


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `predicate` (a callable) until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def terminate(proc: subprocess.Popen[Any], grace: float) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class PulseAudio:
    """PulseAudio in user mode, with only a native socket and a real-time pipe sink."""

    monitor = f"{SINK}.monitor"  # what a capture records

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqtt-speaker-pa-"))
        self.dir.chmod(0o700)
        self.env = {
            "XDG_RUNTIME_DIR": str(self.dir),
            "PULSE_COOKIE": str(self.dir / "cookie"),
            "PULSE_SERVER": f"unix:{self.dir / 'pulse' / 'native'}",
            "PULSE_SINK": SINK,
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PulseAudio:
        if shutil.which("pulseaudio") is None:
            raise RuntimeError("pulseaudio is not installed (script/test installs it)")
        self._proc = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "--enable-memfd=no",
                f"--log-target=file:{self.dir / 'pa.log'}",
                "--load=module-native-protocol-unix auth-anonymous=1",
                f"--load=module-pipe-sink {self.sink_arguments}",
            ],
            env={**os.environ, **self.env, "HOME": str(self.dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.pactl("info").returncode == 0, 20, "PulseAudio to answer")
        return self

    def restart(self) -> None:
        """The server stopped and started again, on the same socket, runtime directory and home (what it saved
        kept), as `systemctl --user restart pulseaudio` does; every client loses its connection, and modules
        loaded since it started are gone."""
        if self._proc is not None:
            terminate(self._proc, 5)
        self.start()

    @property
    def sink_arguments(self) -> str:
        fifo = self.dir / "sink.fifo"
        return f"file={fifo} sink_name={SINK} format=s16le rate={RATE} channels=1 use_system_clock_for_timing=yes"

    @contextlib.contextmanager
    def slow_sink(self, name: str, latency_ms: int) -> Iterator[str]:
        """A sink with a fixed latency of its own (`latency_ms`), as Bluetooth or a timer-scheduled ALSA sink
        has: a tunnel into this server's own sink, so what it plays is captured as the test sink's. A low-
        latency capture client does not make it faster (a null sink takes its latency from its clients)."""
        loaded = self.pactl(
            "load-module", "module-tunnel-sink", f"sink_name={name}", f"server={self.env['PULSE_SERVER']}",
            f"sink={SINK}", f"latency_msec={latency_ms}", "channels=1", f"rate={RATE}", "format=s16le",
        )  # fmt: skip
        if loaded.returncode != 0:
            raise RuntimeError(f"cannot make the sink {name}: {loaded.stderr}")
        try:
            wait_until(lambda: name in self.pactl("list", "short", "sinks").stdout, 10, f"the sink {name}")
            yield name
        finally:
            self.pactl("unload-module", loaded.stdout.strip())

    def sink_latency(self, name: str) -> float:
        """The sink's latency now, in seconds, as the server reports it (pactl)."""
        blocks = self.pactl("list", "sinks").stdout.split("Sink #")
        block = next(b for b in blocks if f"Name: {name}\n" in b)
        line = next(line for line in block.splitlines() if line.strip().startswith("Latency:"))
        return int(line.split()[1]) / 1e6

    def pactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args], env={**os.environ, **self.env}, capture_output=True, text=True, check=False, timeout=10
        )

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc, 5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def capture(self) -> Capture:
        return Capture(self)


class Capture:
    """Records the sink's monitor with parec, from start() until stop(), on the sink's own sample clock."""

    def __init__(self, pulse: PulseAudio) -> None:
        self._pulse = pulse
        self._file = Path(tempfile.mkstemp(prefix="capture-", suffix=".raw", dir=pulse.dir)[1])
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with self._file.open("wb") as out:
            self._proc = subprocess.Popen(
                parec_args(self._pulse.monitor),
                env={**os.environ, **self._pulse.env},
                stdout=out,
            )
        # parec has started recording once bytes arrive (the monitor streams silence too).
        wait_until(lambda: self._file.stat().st_size > 0, 10, "parec to start recording")

    def signal(self) -> Signal:
        data = np.frombuffer(self._file.read_bytes(), dtype="<i2")
        return data.astype(np.float64) / 32768.0

    def wait_for_sound_then_silence(self, silence: float = 0.3, timeout: float = 60) -> Signal:
        """Wait until something was heard and then `silence` seconds of quiet followed it."""

        def done() -> bool:
            x = self.signal()
            regions = sound_regions(x)
            return bool(regions) and (x.size - regions[-1].end) / RATE >= silence

        wait_until(done, timeout, "the captured audio to end", interval=0.1)
        return self.signal()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
            self._proc = None


@dataclass(frozen=True)
class Region:
    start: int
    end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / RATE


def envelope(x: Signal, window: int = 44) -> Signal:
    """Peak amplitude per `window` samples (1 ms at 44.1 kHz)."""
    n = x.size // window
    return np.abs(x[: n * window]).reshape(n, window).max(axis=1) if n else np.zeros(0)


def sound_regions(x: Signal, threshold: float = 0.01, min_gap: float = 0.2) -> list[Region]:
    """Stretches of sound, merging those closer than `min_gap` seconds."""
    window = 44
    env = envelope(x, window)
    loud = np.flatnonzero(env > threshold)
    if loud.size == 0:
        return []
    regions: list[Region] = []
    start = prev = int(loud[0])
    for i in loud[1:]:
        if (i - prev) * window / RATE > min_gap:
            regions.append(Region(start * window, (prev + 1) * window))
            start = int(i)
        prev = int(i)
    regions.append(Region(start * window, (prev + 1) * window))
    return regions


def longest_gap(x: Signal, threshold: float = 0.005) -> float:
    """The longest run of near-silence inside `x`, in seconds (a sine of amplitude 0.3 has none over 0.1 ms)."""
    quiet = np.abs(x) <= threshold
    if not quiet.any():
        return 0.0
    edges = np.diff(np.concatenate(([0], quiet.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return float((ends - starts).max()) / RATE


def dominant_frequency(x: Signal) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    peak = int(np.argmax(spectrum[1:]) + 1)
    return peak * RATE / x.size


def frequency_track(x: Signal, frame: float = 0.05) -> list[float]:
    """The dominant frequency of each `frame` seconds of `x`."""
    n = int(frame * RATE)
    return [dominant_frequency(x[i : i + n]) for i in range(0, x.size - n + 1, n)]


def rms(x: Signal) -> float:
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0
