"""What ducking costs and how it sounds, end to end: the first word's latency with ducking on against off
(alternating, in one capture), with nothing else playing, with a stream merely open that plays silence
(as snapclient and MPD keep one), and with music, on a cache miss and on a cache hit; how far down the
music is at the first word; how long after the last word it is back; whether back-to-back requests keep
it down; and how long before a held `at` it is lowered.

The music is a 2205 Hz tone, the voice the emulator's 200 Hz tones: a low-pass filter leaves the voice to
time; the music's own level is its amplitude at its frequency, 10 ms at a time. The silent stream is
`pacat` playing /dev/zero.

Run: script/bench ducking (BENCH_DUCKING=10 pairs a case); script/bench runs it too. Writes
benchmarks/results/ducking.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import wave
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench import percentiles, write_results
from benchmarks.cpu import cpu_seconds
from benchmarks.rig import FIRST_CHUNK, THRESHOLD, Rig, TimedCapture, rig
from tests.conftest import Daemon
from tests.sound import RATE, PulseAudio, wait_until

PERIOD = 20  # samples: one period of the music
MUSIC_HZ = RATE / PERIOD
MUSIC_AMPLITUDE = 0.2
FULL_DB = 20 * np.log10(MUSIC_AMPLITUDE)
WINDOW = 441  # 10 ms
DEPTH = 12.0  # the default
TEXT = "Hello there"
SENTENCE = "The washing machine has finished."
BACK_WITHIN = 1.0  # dB: the music is back once its level stays this close to full
IDLE = 20.0  # seconds the daemon's CPU is measured idle


def _low_pass(cutoff: float, taps: int = 201) -> np.ndarray:
    n = np.arange(taps) - taps // 2
    kernel = np.sinc(2 * cutoff / RATE * n) * np.blackman(taps)
    return np.asarray(kernel / kernel.sum())


LOW_PASS = _low_pass(800.0)  # passes the voice (200 Hz), takes out the music (2205 Hz) by 70 dB, also as it fades


def voice(x: np.ndarray) -> np.ndarray:
    """The voice alone, sample for sample (the filter is centred: no delay): the music filtered out (an
    average over one of the music's periods would leave a trace of each of its volume steps). Zero where
    the filter would reach past the ends (the music cut off there would pass as a step)."""
    half = LOW_PASS.size // 2
    out = np.zeros(x.size)
    if x.size > LOW_PASS.size:
        out[half : x.size - half] = np.convolve(x, LOW_PASS, mode="valid")
    return out


def voice_onset_after(capture: TimedCapture, moment: float, timeout: float = 30) -> int:
    """The capture index at which the voice was first heard after `moment`."""
    start = capture.index_at(moment)
    found: list[int] = []

    def heard() -> bool:
        x = capture.signal(start)
        loud = np.flatnonzero(np.abs(voice(x)) > THRESHOLD)
        if loud.size:
            found.append(start + int(loud[0]))
        return bool(found)

    wait_until(heard, timeout, "the voice")
    return found[0]


def music_level(x: np.ndarray) -> np.ndarray:
    """The music's level (dB full scale) in each 10 ms window: the tone's amplitude at its own frequency."""
    n = x.size // WINDOW
    frames = x[: n * WINDOW].reshape(n, WINDOW)
    t = np.arange(n * WINDOW).reshape(n, WINDOW) / RATE
    taper = np.blackman(WINDOW)
    amplitude = 2 * np.abs((frames * np.exp(-2j * np.pi * MUSIC_HZ * t) * taper).sum(axis=1)) / taper.sum()
    level: np.ndarray = 20 * np.log10(np.maximum(amplitude, 1e-6))
    return level


def music_file(directory: Path, seconds: float) -> Path:
    path = directory / "music.wav"
    t = np.arange(int(seconds * RATE)) / RATE
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((MUSIC_AMPLITUDE * np.sin(2 * np.pi * MUSIC_HZ * t) * 32767).astype("<i2").tobytes())
    return path


@contextmanager
def player(pulse: PulseAudio, *args: str) -> Iterator[None]:
    """Another player's stream on the sink, tagged media.role=music, for as long as the block runs."""
    proc = subprocess.Popen([*args, "--property=media.role=music"], env={**os.environ, **pulse.env})
    try:
        wait_until(lambda: "pacat" in pulse.pactl("list", "sink-inputs").stdout, 10, "the player's stream")
        time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        proc.wait(5)


def silent_player(pulse: PulseAudio) -> AbstractContextManager[None]:
    """A stream merely open, playing silence: what snapclient or MPD keep when nothing plays."""
    return player(pulse, "pacat", "--raw", "--format=s16le", f"--rate={RATE}", "--channels=1", "/dev/zero")


class Session:
    """The daemon on the rig, measured request by request."""

    def __init__(self, parts: Rig, daemon: Daemon) -> None:
        self.parts = parts
        self.daemon = daemon
        self.capture = parts.capture
        self.n = 0

    def say(self, **request: Any) -> tuple[str, float]:
        self.n += 1
        request_id = f"b{self.n}"
        sent = time.monotonic()
        self.parts.observer.publish(self.daemon.topic("say"), json.dumps({"id": request_id, **request}))
        return request_id, sent

    def settle(self, music: bool) -> None:
        """Until the music is back at full level (or, without music, until it is quiet): a fresh start."""
        if music:
            self.wait_music(lambda recent: bool(np.all(np.abs(recent - FULL_DB) <= 0.5)), "the music at full level")
        else:
            self.capture.quiet_for(0.3)
        time.sleep(0.2)

    def wait_music(self, predicate: Any, what: str, seconds: float = 0.3, timeout: float = 30) -> None:
        need = int(seconds * RATE)

        def ready() -> bool:
            level = music_level(self.capture.signal(max(0, self.capture.samples() - need)))
            return level.size >= need // WINDOW and bool(predicate(level))

        wait_until(ready, timeout, what, interval=0.05)

    def latency(self, cache: bool, duck: bool, music: bool) -> float:
        """Publish to the first voice sample heard, ms (the emulator's first-chunk delay taken off a miss)."""
        self.settle(music)
        request_id, sent = self.say(text=TEXT, cache=cache, duck=duck)
        onset = voice_onset_after(self.capture, sent)
        self.daemon.wait_terminal(request_id)
        return (self.capture.time_of(onset) - sent - (0 if cache else FIRST_CHUNK)) * 1000

    def pairs(self, count: int, *, cache: bool, music: bool) -> dict[str, Any]:
        """`count` requests with ducking and `count` without, alternating."""
        on, off = [], []
        for _ in range(count):
            off.append(self.latency(cache, False, music))
            on.append(self.latency(cache, True, music))
        return {"on": percentiles(on) | {"raw": on}, "off": percentiles(off) | {"raw": off}}

    def return_after_last_word(self, count: int) -> dict[str, Any]:
        """With music: how far down it is at the first word (dB below full, over its first 50 ms) and how long
        after the last word it is back (within BACK_WITHIN dB of full, and stays there)."""
        depth_at_first, back_after = [], []
        for _ in range(count):
            self.settle(True)
            start = self.capture.samples()
            request_id, _ = self.say(text=SENTENCE, cache=False)
            self.daemon.wait_terminal(request_id)
            self.wait_music(lambda recent: bool(np.all(np.abs(recent - FULL_DB) <= 0.5)), "the music back", 1.0)
            x = self.capture.signal(start)
            loud = np.flatnonzero(np.abs(voice(x)) > THRESHOLD)
            first, last = int(loud[0]) // WINDOW, int(loud[-1]) // WINDOW + 1
            level = music_level(x)
            depth_at_first.append(FULL_DB - float(np.median(level[first : first + 5])))
            away = np.flatnonzero(np.abs(level[last:] - FULL_DB) > BACK_WITHIN)
            back_after.append((int(away[-1]) + 1 if away.size else 0) * WINDOW / RATE * 1000)
        return {
            "depth_at_first_word_db": percentiles(depth_at_first),
            "back_after_last_word_ms": percentiles(back_after),
        }

    def back_to_back(self) -> dict[str, float]:
        """Two requests queued together: the music's highest level between them (dB below full)."""
        self.settle(True)
        start = self.capture.samples()
        first, _ = self.say(text=SENTENCE, cache=False)
        second, _ = self.say(text=SENTENCE, cache=False)
        self.daemon.wait_terminal(first)
        self.daemon.wait_terminal(second)
        self.wait_music(lambda recent: bool(np.all(np.abs(recent - FULL_DB) <= 0.5)), "the music back", 1.0)
        x = self.capture.signal(start)
        loud = np.flatnonzero(np.abs(voice(x)) > THRESHOLD)
        gap = int(np.argmax(np.diff(loud)))
        pause = (int(loud[gap]) // WINDOW + 1, int(loud[gap + 1]) // WINDOW)
        level = music_level(x)
        return {
            "pause_ms": (pause[1] - pause[0]) * WINDOW / RATE * 1000,
            "highest_in_pause_db": FULL_DB - float(level[pause[0] : pause[1]].max()),
        }

    def idle_cpu(self) -> float:
        """The daemon's CPU while nothing is said, % of one core (IDLE seconds)."""
        time.sleep(2)
        before = cpu_seconds(self.daemon.pid)
        time.sleep(IDLE)
        return (cpu_seconds(self.daemon.pid) - before) / IDLE * 100

    def held_at(self, wait: float) -> dict[str, float]:
        """A say for `wait` seconds from now: how long before its first word the music began to go down, and
        how far down it was at the first word."""
        self.settle(True)
        start = self.capture.samples()
        request_id, _ = self.say(text=TEXT, cache=False, at=time.time() + wait)
        self.daemon.wait_terminal(request_id, timeout=wait + 30)
        self.wait_music(lambda recent: bool(np.all(np.abs(recent - FULL_DB) <= 0.5)), "the music back", 1.0)
        x = self.capture.signal(start)
        first = int(np.flatnonzero(np.abs(voice(x)) > THRESHOLD)[0]) // WINDOW
        level = music_level(x)
        lowered = int(np.flatnonzero(level[:first] > FULL_DB - BACK_WITHIN)[-1]) + 1
        return {
            "wait_s": wait,
            "lowered_before_first_word_ms": (first - lowered) * WINDOW / RATE * 1000,
            "depth_at_first_word_db": FULL_DB - float(np.median(level[first : first + 5])),
        }


def run(count: int) -> dict[str, Any]:
    with rig("mqtt-speaker-bench-duck-") as parts:
        return measured(parts, count)


def measured(parts: Rig, count: int) -> dict[str, Any]:
    daemon = Daemon(parts.broker, parts.observer, parts.daemon_env(MQTT_SPEAKER_CACHE__ENABLED="true"), parts.work)
    results: dict[str, Any] = {"machine": f"{platform.node()}: {platform.platform()}, {os.cpu_count()} cores"}
    daemon.start(LOG_LEVEL="WARNING")
    session = Session(parts, daemon)
    try:
        results["idle_cpu"] = {"nothing_else": session.idle_cpu()}
        results["nothing_else"] = session.pairs(count, cache=False, music=False)
        with silent_player(parts.pulse):
            results["idle_cpu"]["silent_stream"] = session.idle_cpu()  # its peaks are measured meanwhile
            results["silent_stream"] = session.pairs(count, cache=False, music=False)
            session.latency(True, False, False)  # into the cache
            results["silent_stream_cache_hit"] = session.pairs(count, cache=True, music=False)
        music = music_file(parts.work, 3600)
        with player(parts.pulse, "pacat", "--file-format=wav", str(music)):
            results["music"] = session.pairs(count, cache=False, music=True)
            results["music_cache_hit"] = session.pairs(count, cache=True, music=True)
            results["return"] = session.return_after_last_word(count)
            results["back_to_back"] = session.back_to_back()
            results["held_at"] = session.held_at(4.0)
    finally:
        daemon.stop()
    return results


def _met(flag: bool) -> str:
    return "yes" if flag else "**no**"


def table(r: dict[str, Any]) -> str:
    def added(key: str) -> float:
        return float(r[key]["on"]["p50"] - r[key]["off"]["p50"])

    def row(label: str, key: str, target: str) -> str:
        on, off = r[key]["on"], r[key]["off"]
        return (
            f"| {label} | {off['p50']:.0f} ({off['p95']:.0f}) | {on['p50']:.0f} ({on['p95']:.0f}) "
            f"| {added(key):.0f} | {target} |"
        )

    back, at, b2b, idle = r["return"], r["held_at"], r["back_to_back"], r["idle_cpu"]
    depth_first = back["depth_at_first_word_db"]["p50"]
    back_ms = back["back_after_last_word_ms"]
    return "\n".join(
        [
            "# Ducking: what it costs the first word, and how the music moves",
            "",
            f"Machine: {r['machine']}. Emulator first chunk {FIRST_CHUNK * 1000:.0f} ms (subtracted on a cache "
            f"miss). Depth {DEPTH:.0f} dB (the default). Latency: publish to the first voice sample heard, "
            "ms, p50 (p95); ducking on and off alternate in one capture.",
            "",
            "| case | ducking off | ducking on | added p50 | target |",
            "|---|---|---|---|---|",
            row("nothing else plays, cache miss", "nothing_else", ""),
            row("a silent stream open, cache miss", "silent_stream", f"<= 10 ms: {_met(added('silent_stream') <= 10)}"),
            row("a silent stream open, cache hit", "silent_stream_cache_hit", ""),
            row("music, cache miss", "music", f"<= 50 ms: {_met(added('music') <= 50)}"),
            row("music, cache hit", "music_cache_hit", ""),
            "",
            "| the music | measured | target |",
            "|---|---|---|",
            f"| down at the first word, dB (p50, {back['depth_at_first_word_db']['n']} requests) | {depth_first:.1f} "
            f"| the depth ({DEPTH:.0f}) within 2: {_met(abs(depth_first - DEPTH) <= 2)} |",
            f"| back after the last word, ms, p50 (max) | {back_ms['p50']:.0f} ({back_ms['p99']:.0f}) "
            f"| <= 600: {_met(back_ms['p99'] <= 600)} |",
            f"| two requests queued together: highest between them, dB down ({b2b['pause_ms']:.0f} ms pause) "
            f"| {b2b['highest_in_pause_db']:.1f} | held down: {_met(b2b['highest_in_pause_db'] >= DEPTH - 2)} |",
            f"| a say held {at['wait_s']:.0f} s for its `at`: lowered before its first word, ms "
            f"| {at['lowered_before_first_word_ms']:.0f} | near the instant (< 500): "
            f"{_met(at['lowered_before_first_word_ms'] < 500)} |",
            f"| ... down at its first word, dB | {at['depth_at_first_word_db']:.1f} "
            f"| the depth within 2: {_met(abs(at['depth_at_first_word_db'] - DEPTH) <= 2)} |",
            f"| the daemon idle, % of one core: nothing else open | {idle['nothing_else']:.3f} | |",
            f"| ... a silent stream open (its peaks measured, 10 a second) | {idle['silent_stream']:.3f} "
            f"| under 0.5 %: {_met(idle['silent_stream'] < 0.5)} |",
            "",
        ]
    )


def main() -> None:
    count = int(os.environ.get("BENCH_DUCKING", "10"))
    results = run(count)
    write_results("ducking", results, table(results))


if __name__ == "__main__":
    main()
