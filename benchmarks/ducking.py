"""What ducking costs the first word: latency from publish to the first sample of the voice, ducking on
against off, with music playing on the same sink (and without, and for a cache hit, where no synthesis
time hides the fade).

Design measured: "duck first": the fade down (FADE_DOWN) starts as the request starts, in parallel with
synthesis, and the first sample waits until it is done; so the added latency is at most the fade, minus
whatever synthesis took. Nothing to lower: no wait at all.

The music is a 2205 Hz tone: exactly 20 samples a period at 44.1 kHz, so a 20-sample moving average
removes it entirely and leaves the voice (the emulator's 200 Hz tones) to time.

Run: .venv/bin/python -m benchmarks.ducking (BENCH_REQUESTS=15). Writes benchmarks/results/ducking.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench import percentiles, write_results
from benchmarks.rig import FIRST_CHUNK, THRESHOLD, Rig, TimedCapture, rig
from mqtt_speaker.playback.ducking import FADE_DOWN, FADE_UP, LINGER
from tests.conftest import Daemon
from tests.sound import RATE, wait_until

PERIOD = 20  # samples: one period of the music
MUSIC_HZ = RATE / PERIOD
TEXT = "Hello there"


def voice_onset_after(capture: TimedCapture, moment: float, timeout: float = 30) -> float:
    """When the voice was first heard after `moment` (the music filtered out)."""
    start = capture.index_at(moment)
    found: list[int] = []

    def heard() -> bool:
        x = capture.signal(start)
        if x.size < PERIOD:
            return False
        voice = np.convolve(x, np.ones(PERIOD) / PERIOD, mode="valid")
        loud = np.flatnonzero(np.abs(voice) > THRESHOLD)
        if loud.size:
            found.append(start + int(loud[0]))
        return bool(found)

    wait_until(heard, timeout, "the voice")
    return capture.time_of(found[0])


def music_file(directory: Path, seconds: float) -> Path:
    path = directory / "music.wav"
    t = np.arange(int(seconds * RATE)) / RATE
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((0.2 * np.sin(2 * np.pi * MUSIC_HZ * t) * 32767).astype("<i2").tobytes())
    return path


def run(count: int) -> dict[str, Any]:
    with rig("mqtt-speaker-bench-duck-") as parts:
        return measured(parts, count)


def measured(parts: Rig, count: int) -> dict[str, Any]:
    work, pulse, broker, _, observer, capture = parts
    daemon = Daemon(broker, observer, parts.daemon_env(), work)
    music: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {
        "machine": f"{platform.node()}: {platform.platform()}, {os.cpu_count()} cores",
        "fade_down_ms": FADE_DOWN * 1000,
    }

    def measure(label: str, depth: float, cache: bool, delay: float) -> None:
        observer.publish(daemon.topic("set/duck_db"), str(depth))
        wait_until(lambda: daemon.states()[-1]["duck_db"] == depth, 10, "the depth to be set")
        latencies = []
        for _ in range(count):
            time.sleep(LINGER + FADE_UP + 0.4)  # the music back up from the last one
            sent = time.monotonic()
            observer.publish(daemon.topic("say"), json.dumps({"text": TEXT, "cache": cache}))
            latencies.append((voice_onset_after(capture, sent) - sent - delay) * 1000)
        results[label] = percentiles(latencies) | {"raw": latencies}

    try:
        daemon.start(LOG_LEVEL="WARNING")
        measure("no_music_ducking_on", 12, False, FIRST_CHUNK)
        music = subprocess.Popen(
            ["paplay", "--property=media.role=music", str(music_file(work, 3600))], env={**os.environ, **pulse.env}
        )
        time.sleep(0.5)
        measure("music_ducking_off", 0, False, FIRST_CHUNK)
        measure("music_ducking_on", 12, False, FIRST_CHUNK)
        observer.publish(daemon.topic("say"), json.dumps({"text": TEXT}))  # into the cache
        time.sleep(2)
        measure("cache_hit_ducking_off", 0, True, 0)
        measure("cache_hit_ducking_on", 12, True, 0)
    finally:
        if music is not None:
            music.terminate()
            music.wait(5)
        daemon.stop()
    return results


def table(r: dict[str, Any]) -> str:
    def row(label: str, key: str) -> str:
        p = r[key]
        return f"| {label} | {p['p50']:.0f} | {p['p95']:.0f} | {p['n']} |"

    added = r["music_ducking_on"]["p50"] - r["music_ducking_off"]["p50"]
    added_hit = r["cache_hit_ducking_on"]["p50"] - r["cache_hit_ducking_off"]["p50"]
    within = max(added, added_hit) <= r["fade_down_ms"] + 30  # 30 ms: one mixing block and scheduling
    return "\n".join(
        [
            "# Ducking: latency of the first word",
            "",
            f"Machine: {r['machine']}. Emulator first chunk {FIRST_CHUNK * 1000:.0f} ms (subtracted), "
            f"fade down {r['fade_down_ms']:.0f} ms. Design: duck first, the fade in parallel with synthesis.",
            "",
            "| case | p50 ms | p95 ms | n |",
            "|---|---|---|---|",
            row("no music, ducking on (nothing to lower)", "no_music_ducking_on"),
            row("music, ducking off", "music_ducking_off"),
            row("music, ducking on (12 dB)", "music_ducking_on"),
            row("music, cache hit, ducking off", "cache_hit_ducking_off"),
            row("music, cache hit, ducking on", "cache_hit_ducking_on"),
            "",
            f"Added by ducking (p50): {added:.0f} ms after synthesis, {added_hit:.0f} ms on a cache hit "
            f"(at most the fade, {r['fade_down_ms']:.0f} ms: {'yes' if within else '**no**'}).",
            "",
        ]
    )


def main() -> None:
    count = int(os.environ.get("BENCH_REQUESTS", "15"))
    results = run(count)
    write_results("ducking", results, table(results))


if __name__ == "__main__":
    main()
