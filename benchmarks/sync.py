"""One voice for the whole house: three speakers on one machine, a broadcast synthesized once and shared,
against each room synthesizing its own copy (docs/sync.md).

Three daemons play into three rooms, channels of one clocked pipe sink recorded by one parec
(tests/rooms.py). The emulator speaks as a generative voice does: each synthesis at a pace of its own
(within 8 %), its first chunk 90 to 170 ms after the request, every later chunk jittered by up to 5 ms.
Every broadcast carries `ts`, as docs/sync.md advises. For each broadcast (a new text each time: a cache
hit would be no synthesis) it measures:
- the onset and the end spread: between the first and the last room's first sample, and last sample;
- the latency: from the publish to the first room's first sample, as captured;
- the syntheses (emulator contexts) and the characters billed, per broadcast;
- the bytes the broker carried for the shared audio, per second of speech;
- the CPU of the room that synthesized and of a room that listened, per second of speech.
Modes: shared (the default), each room its own copy (`sync.share = false`), and, for comparison, each
room its own copy unsynchronized (`"sync": false`).

Run with `script/bench sync` (BENCH_SYNC_BROADCASTS, default 20). Writes benchmarks/results/sync.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench import percentiles, write_results
from benchmarks.cpu import cpu_seconds
from benchmarks.rig import Rig, rig
from tests.conftest import BASE, Daemon
from tests.rooms import CHANNELS, NODELAY_BROKER, Rooms, end_spread_ms, onset, spread_ms
from tests.sound import RATE

RESULTS = Path(__file__).resolve().parent / "results"
LEAD = 0.5
PACE_SPREAD = 0.08
MODES: list[tuple[str, str, dict[str, Any]]] = [  # (name, sync.share, what each broadcast adds)
    ("shared", "true", {}),
    ("per_room", "false", {}),
    ("per_room_unsynchronized", "false", {"sync": False}),
]
SHARED_TOPICS = f"{BASE}/all/shared/"


@dataclass
class Mode:
    onsets: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    syntheses: list[int] = field(default_factory=list)
    billed: list[int] = field(default_factory=list)
    text_chars: list[int] = field(default_factory=list)
    speech_s: float = 0.0
    broker_bytes: int = 0
    cpu_synthesizing: float = 0.0  # seconds, summed over broadcasts
    cpu_listening: float = 0.0  # seconds, the mean of the other rooms', summed over broadcasts

    def summary(self) -> dict[str, Any]:
        return {
            "onset_spread_ms": {**percentiles(self.onsets), "max": max(self.onsets)},
            "end_spread_ms": {**percentiles(self.ends), "max": max(self.ends)},
            "onsets_ms": [round(v, 2) for v in self.onsets],
            "ends_ms": [round(v, 2) for v in self.ends],
            "latency_ms": percentiles(self.latencies),
            "syntheses_per_broadcast": statistics.mean(self.syntheses),
            "billed_per_text_char": sum(self.billed) / sum(self.text_chars),
            "speech_s": round(self.speech_s, 2),
            "broker_bytes_per_speech_s": self.broker_bytes / self.speech_s,
            "cpu_synthesizing_per_speech_s": self.cpu_synthesizing / self.speech_s,
            "cpu_listening_per_speech_s": self.cpu_listening / self.speech_s,
        }


def broadcast(parts: Rig, daemons: list[Daemon], mode: Mode, request_id: str, payload: dict[str, Any]) -> None:
    """One all/say (with `ts`), measured into `mode`."""
    rooms = parts.pulse
    assert isinstance(rooms, Rooms)
    cpu = {daemon.site: cpu_seconds(daemon.pid) for daemon in daemons}
    seen = len(parts.observer.messages)
    with rooms.capture() as capture:
        published = capture.signal().shape[0]
        parts.observer.publish(f"{BASE}/all/say", json.dumps({"id": request_id, **payload, "ts": time.time()}))
        finished = [daemon.wait_terminal(request_id) for daemon in daemons]
        assert all(event["event_type"] == "finished" for event in finished), finished
        x = capture.wait_for_sound_then_silence(list(range(len(daemons))))
    used = {daemon.site: cpu_seconds(daemon.pid) - cpu[daemon.site] for daemon in daemons}
    every = list(range(len(daemons)))
    mode.onsets.append(spread_ms(x, every))
    mode.ends.append(end_spread_ms(x, every))
    first = min(o for room in every if (o := onset(x[:, room])) is not None)
    mode.latencies.append((first - published) / RATE * 1000)
    contexts = parts.emulator.contexts_for(payload["text"])
    mode.syntheses.append(len(contexts))
    mode.billed.append(sum(len(c.transcript) for c in contexts))
    mode.text_chars.append(len(payload["text"]))
    mode.speech_s += finished[0]["duration_ms"] / 1000
    messages = parts.observer.messages[seen:]
    mode.broker_bytes += sum(len(m.payload) for m in messages if m.topic.startswith(SHARED_TOPICS))
    synthesizers = {site for event in finished for site in event["synthesized_by"]}
    synthesizer = next(iter(synthesizers)) if len(synthesizers) == 1 else None
    if synthesizer is None:  # each room its own: every room synthesized, none only listened
        mode.cpu_synthesizing += statistics.mean(used.values())
        mode.cpu_listening += statistics.mean(used.values())
        return
    mode.cpu_synthesizing += used[synthesizer]
    mode.cpu_listening += statistics.mean(v for site, v in used.items() if site != synthesizer)


def measure_mode(parts: Rig, name: str, share: str, extra: dict[str, Any], count: int) -> dict[str, Any]:
    rooms = parts.pulse
    assert isinstance(rooms, Rooms)
    daemons: list[Daemon] = []
    mode = Mode()
    try:
        for index in range(len(CHANNELS)):
            env = parts.daemon_env(
                MQTT_SPEAKER_CACHE__ENABLED="false",
                MQTT_SPEAKER_SYNC__LEAD=str(LEAD),
                MQTT_SPEAKER_SYNC__SHARE=share,
                **rooms.room_env(index),
            )
            daemons.append(Daemon(parts.broker, parts.observer, env, parts.work).start(LOG_LEVEL="WARNING"))
        for n in range(count):
            text = f"Announcement number {n} in {name} mode: the laundry is done, and the dryer is free now."
            broadcast(parts, daemons, mode, f"{name}-{n}", {"text": text, **extra})
    finally:
        for daemon in daemons:
            daemon.stop()
    return mode.summary()


def run(count: int) -> dict[str, Any]:
    with rig("mqtt-speaker-bench-sync-", server=Rooms, broker_config=NODELAY_BROKER) as parts:
        emulator = parts.emulator
        emulator.behaviour.first_chunk_jitter = 0.08
        emulator.behaviour.jitter = 0.005
        emulator.behaviour.real_time_factor = 0.2
        emulator.behaviour.pace_spread = PACE_SPREAD
        results: dict[str, Any] = {
            "machine": f"{platform.node()}: {platform.platform()}, {os.cpu_count()} cores",
            "rooms": len(CHANNELS),
            "lead_s": LEAD,
            "broadcasts": count,
        }
        for name, share, extra in MODES:
            results[name] = measure_mode(parts, name, share, extra, count)
        return results


def report(results: dict[str, Any]) -> str:
    modes = [results[name] for name, _share, _extra in MODES]

    def row(name: str, pick: Any, digits: int = 1) -> str:
        return f"| {name} | " + " | ".join(f"{pick(mode):.{digits}f}" for mode in modes) + " |"

    shared, own = results["shared"], results["per_room"]
    lines = [
        f"Machine: {results['machine']}. {results['rooms']} speakers on this machine, {results['broadcasts']} "
        f"all/say broadcasts with `ts` per mode, lead {results['lead_s']} s; each synthesis at its own pace "
        f"(within {PACE_SPREAD:.0%}), first chunk 90-170 ms, chunks jittered by 5 ms; mosquitto with "
        "set_tcp_nodelay.",
        "",
        '| measure | shared (default) | each room its own | each its own, `"sync": false` |',
        "|---|---|---|---|",
        row("onset spread p50 (ms)", lambda m: m["onset_spread_ms"]["p50"]),
        row("onset spread p95 (ms)", lambda m: m["onset_spread_ms"]["p95"]),
        row("onset spread max (ms)", lambda m: m["onset_spread_ms"]["max"]),
        row("end spread p50 (ms)", lambda m: m["end_spread_ms"]["p50"]),
        row("end spread p95 (ms)", lambda m: m["end_spread_ms"]["p95"]),
        row("end spread max (ms)", lambda m: m["end_spread_ms"]["max"]),
        row("publish to first sample p50 (ms)", lambda m: m["latency_ms"]["p50"]),
        row("syntheses per broadcast", lambda m: m["syntheses_per_broadcast"]),
        row("characters billed per text character", lambda m: m["billed_per_text_char"]),
        row("broker bytes per second of speech (shared audio)", lambda m: m["broker_bytes_per_speech_s"], 0),
        row("CPU of the synthesizing room (ms per s of speech)", lambda m: m["cpu_synthesizing_per_speech_s"] * 1e3),
        row("CPU of a listening room (ms per s of speech)", lambda m: m["cpu_listening_per_speech_s"] * 1e3),
        "",
        f"Shared: every room within 10 ms at both ends every time: "
        f"{'yes' if max(shared['onset_spread_ms']['max'], shared['end_spread_ms']['max']) <= 10 else 'no'}; "
        f"each room its own copy ends {own['end_spread_ms']['p50']:.0f} ms apart at the median.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = run(int(os.environ.get("BENCH_SYNC_BROADCASTS", "20")))
    write_results("sync", results, report(results))


if __name__ == "__main__":
    main()
