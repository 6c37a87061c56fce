"""End-to-end latency benchmark: the daemon against the floor and the usual approach, on real parts.

Latency = from the moment a request is published to the first audible sample in the PulseAudio
capture, minus the emulator's configured first-chunk delay: the time the system and the audio path
add. Capture samples are put on the wall clock by the arrival time of the block that carried them
(the monitor's own small delay is the same for every system, so it cancels in the comparisons).

Run with script/bench. Writes benchmarks/results/{results.json, results.md, results.png}.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import cpu
from benchmarks.cpu import piper_model
from benchmarks.rig import FIRST_CHUNK, TimedCapture, rig
from tests.cartesia_emulator import TEST_API_KEY
from tests.conftest import Daemon, Observer
from tests.sound import RATE, longest_gap, sound_regions

RESULTS = Path(__file__).resolve().parent / "results"
SHORT = "Hello there"


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "n": len(values)}


def measure(
    capture: TimedCapture, publish: Callable[[str], None], text: str, count: int, delay: float = FIRST_CHUNK
) -> list[float]:
    """Added latency (ms) of `count` requests, one after the other, each after silence; `delay` (the
    emulator's first-chunk delay, where the emulator is involved) is subtracted."""
    latencies = []
    for _ in range(count):
        capture.quiet_for(0.25)
        sent = time.monotonic()
        publish(text)
        heard = capture.onset_after(sent)
        latencies.append((heard - sent - delay) * 1000)
    capture.quiet_for(0.25)
    return latencies


@contextmanager
def helper(script: str, *args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.{script}", *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def run(count: int, idle_seconds: float) -> dict[str, Any]:  # noqa: PLR0915 - one benchmark run, measure after measure, in the order of its table
    results: dict[str, Any] = {"machine": f"{platform.node()}: {platform.platform()}, {os.cpu_count()} cores"}
    with rig("mqtt-speaker-bench-") as parts:
        work, pulse, broker, emulator, observer, capture = parts
        env = {**os.environ, **pulse.env, "XDG_STATE_HOME": str(work / "state")}  # not the home directory
        # 1. The floor.
        with helper("floor", str(broker.port), "bench/floor", env=env):
            floor = measure(capture, lambda t: observer.publish("bench/floor", t), SHORT, count, delay=0)
        # 2. The usual approach: a new socket per message, everything collected, then played.
        with helper("usual", str(broker.port), "bench/usual", emulator.url, TEST_API_KEY, env=env):
            usual = measure(capture, lambda t: observer.publish("bench/usual", t), SHORT, count)
            long_text = "x" * 250  # ten seconds of speech
            capture.quiet_for(0.25)
            sent = time.monotonic()
            observer.publish("bench/usual", long_text)
            usual_ttfa = (capture.onset_after(sent) - sent) * 1000
            capture.quiet_for(0.5, timeout=120)

        # 3. The daemon.
        cartesia = parts.daemon_env(MQTT_SPEAKER_CACHE__ENABLED="true")
        cpu.compile_once(broker, observer, cartesia, work)  # start time and memory from the next start
        daemon = Daemon(broker, observer, cartesia, work)
        began = time.monotonic()
        daemon.start(LOG_LEVEL="WARNING")
        online = (time.monotonic() - began) * 1000
        say = daemon.topic("say")
        rss_idle = daemon.rss_kb() / 1024
        ours = measure(capture, lambda t: observer.publish(say, json.dumps({"text": t, "cache": False})), SHORT, count)
        # A ten-second announcement: time to first audio.
        capture.quiet_for(0.25)
        sent = time.monotonic()
        observer.publish(say, json.dumps({"text": "x" * 250, "cache": False}))
        ours_ttfa = (capture.onset_after(sent) - sent) * 1000
        capture.quiet_for(0.5, timeout=120)
        # Gaps at segment (emotion) boundaries, normal and slow/jittery emulator.
        segments = [
            {"text": "Well maybe if you just ", "emotion": "neutral"},
            {"text": "loosen up a bit! ", "emotion": "angry"},
            {"text": "Or not, as you like.", "emotion": "calm"},
        ]
        gaps = {}
        marks: list[tuple[int, str]] = []  # (sample index in the timeline, what happened), for the plot
        for label, rtf, jitter in (("normal", 0.25, 0.0), ("slow_jittery", 0.5, 0.02)):
            emulator.behaviour.real_time_factor, emulator.behaviour.jitter = rtf, jitter
            capture.quiet_for(0.25)
            start = capture.samples()
            sent = time.monotonic()
            observer.publish(say, json.dumps({"id": label, "segments": segments, "cache": False}))
            capture.onset_after(sent - 0.05)
            daemon.wait_terminal(label, timeout=60)
            capture.quiet_for(0.3, timeout=60)
            x = capture.signal(start)
            region = sound_regions(x)
            gaps[label] = longest_gap(x[region[0].start : region[-1].end]) * 1000
        emulator.behaviour.real_time_factor, emulator.behaviour.jitter = 0.25, 0.0
        timeline = capture.signal(start)
        marks.append((capture.index_at(sent) - start, "published"))
        for message in observer.on(daemon.topic("event")):
            event = message.json()
            if event.get("id") == "slow_jittery":
                marks.append((capture.index_at(message.received) - start, f"{event['event_type']} (event)"))
        boundary = region[0].start
        for segment in segments[:-1]:
            boundary += emulator.contexts_for(segment["text"].strip())[-1].samples_sent
            marks.append((boundary, "emotion boundary (heard)"))
        # A cache hit.
        observer.publish(say, json.dumps({"text": "Cached phrase"}))
        capture.onset_after(time.monotonic() - 0.05)
        cache_hit = measure(capture, lambda t: observer.publish(say, json.dumps({"text": t})), "Cached phrase", 10, 0)
        # Idle CPU, then memory after 200 requests.
        pid = daemon.pid
        before = cpu.cpu_seconds(pid)
        time.sleep(idle_seconds)
        idle_cpu = (cpu.cpu_seconds(pid) - before) / idle_seconds * 100
        for n in range(200):
            observer.publish(say, json.dumps({"id": f"m{n}", "text": "Hi", "cache": False}))
        daemon.wait_terminal("m199", timeout=300)
        rss_after = daemon.rss_kb() / 1024
        daemon.stop()

        engines = {}
        for engine, extra in (("espeak", {}), ("piper", {"MQTT_SPEAKER_PIPER__MODEL": piper_model()})):
            if engine == "piper" and not extra["MQTT_SPEAKER_PIPER__MODEL"]:
                continue
            local = Daemon(broker, observer, {**cartesia, **extra, "MQTT_SPEAKER_ENGINE": engine}, work)
            local.start(LOG_LEVEL="WARNING")
            topic = local.topic("say")
            engines[engine] = percentiles(measure(capture, local_say(observer, topic), SHORT, 10, delay=0))
            local.stop()

        # 4. CPU per second of speech, CPU quotas and memory, beside pacat and a minimal player.
        results["cpu"] = cpu.run(broker, observer, capture, work, cartesia, pulse)

    results.update(
        {
            "floor": percentiles(floor[1:]) | {"first": floor[0]},
            "usual": percentiles(usual[1:]) | {"first": usual[0], "ttfa_10s_ms": usual_ttfa},
            "daemon": percentiles(ours[1:]) | {"first": ours[0], "ttfa_10s_ms": ours_ttfa},
            "segment_gap_ms": gaps,
            "cache_hit": percentiles(cache_hit),
            "engines": engines,
            "idle_cpu_percent": idle_cpu,
            "rss_mb": {"idle": rss_idle, "after_200": rss_after},
            "start_to_online_ms": online,
            "raw": {"floor": floor, "usual": usual, "daemon": ours},
        }
    )
    plot(results, timeline, marks)
    return results


def local_say(observer: Observer, topic: str) -> Callable[[str], None]:
    return lambda text: observer.publish(topic, json.dumps({"text": text, "cache": False}))


def _met(flag: bool) -> str:
    return "yes" if flag else "**no**"


def table(r: dict[str, Any]) -> str:
    f, u, d = r["floor"], r["usual"], r["daemon"]
    gaps, cache, rss = r["segment_gap_ms"], r["cache_hit"], r["rss_mb"]
    speedup = u["ttfa_10s_ms"] / d["ttfa_10s_ms"]
    rows = [
        (
            "added latency p50 (ms)",
            f["p50"],
            u["p50"],
            d["p50"],
            f"within 10 ms of the floor: {_met(d['p50'] - f['p50'] <= 10)}",
        ),
        ("added latency p95 (ms)", f["p95"], u["p95"], d["p95"], ""),
        (
            "added latency p99 (ms)",
            f["p99"],
            u["p99"],
            d["p99"],
            f"within 30 ms of the floor: {_met(d['p99'] - f['p99'] <= 30)}",
        ),
        (
            "first request after start (ms)",
            f["first"],
            u["first"],
            d["first"],
            f"within 50 ms of the floor: {_met(d['first'] - f['first'] <= 50)}",
        ),
        (
            "time to first audio, 10 s announcement (ms)",
            None,
            u["ttfa_10s_ms"],
            d["ttfa_10s_ms"],
            f"10x lower than the usual approach: {_met(speedup >= 10)} ({speedup:.1f}x)",
        ),
        (
            "largest gap at segment boundaries (ms)",
            None,
            None,
            gaps["normal"],
            f"under 10 ms: {_met(gaps['normal'] < 10)}",
        ),
        (
            "... slow, jittery emulator (rtf 0.5, 20 ms jitter)",
            None,
            None,
            gaps["slow_jittery"],
            f"under 10 ms: {_met(gaps['slow_jittery'] < 10)}",
        ),
        (
            "cache hit latency p50 (ms)",
            None,
            None,
            cache["p50"],
            f"within 5 ms of the floor: {_met(cache['p50'] - f['p50'] <= 5)}",
        ),
        *[(f"{name} engine latency p50 (ms)", None, None, v["p50"], "") for name, v in r["engines"].items()],
        (
            "daemon CPU idle (% of one core)",
            None,
            None,
            r["idle_cpu_percent"],
            f"under 0.5 %: {_met(r['idle_cpu_percent'] < 0.5)}",
        ),
        ("resident memory idle (MB)", None, None, rss["idle"], f"under 80 MB: {_met(rss['idle'] < 80)}"),
        (
            "resident memory after 200 requests (MB)",
            None,
            None,
            rss["after_200"],
            f"not growing: {_met(rss['after_200'] - rss['idle'] < 5)}",
        ),
        (
            "start to online (ms)",
            None,
            None,
            r["start_to_online_ms"],
            f"within 1.5 s: {_met(r['start_to_online_ms'] <= 1500)}",
        ),
    ]
    lines = [
        f"Machine: {r['machine']}. Emulator first-chunk delay {FIRST_CHUNK * 1000:.0f} ms (subtracted).",
        "",
        "| measure | floor | usual approach | mqtt-speaker | target met |",
        "|---|---|---|---|---|",
    ]
    for label, *values, target in rows:
        cells = ["" if v is None else f"{v:.1f}" for v in values]
        lines.append(f"| {label} | {' | '.join(cells)} | {target} |")
    lines += ["", "CPU, CPU quota and memory, side by side (cgroup quota period 100 ms):", "", cpu.table(r["cpu"])]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], timeline: np.ndarray, marks: list[tuple[int, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    data = [r["raw"][k] for k in ("floor", "daemon", "usual")]
    top.boxplot(data, orientation="horizontal", tick_labels=["floor", "mqtt-speaker", "usual approach"])
    top.set_xlabel("added latency, publish to first audible sample, ms")
    top.set_title("Latency per system")
    t = np.arange(timeline.size) / RATE
    bottom.plot(t, timeline, linewidth=0.3)
    for n, (index, what) in enumerate(sorted(marks)):
        bottom.axvline(index / RATE, color="tab:red", linewidth=0.8)
        bottom.annotate(what, (index / RATE, 0.95 - 0.09 * n), xycoords=("data", "axes fraction"), fontsize=8)
    bottom.set_xlabel("seconds (capture clock)")
    bottom.set_title("Three segments (neutral, angry, calm) on the slow, jittery emulator")
    fig.tight_layout()
    fig.savefig(RESULTS / "results.png", dpi=110)


def write_results(name: str, results: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/NAME.json and NAME.md, and the table on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {RESULTS / name}.json and .md")


def main() -> None:
    count = int(os.environ.get("BENCH_REQUESTS", "50"))
    idle = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
    RESULTS.mkdir(exist_ok=True)  # the plot is written on the way
    results = run(count, idle)
    write_results("results", results, table(results))


if __name__ == "__main__":
    main()
