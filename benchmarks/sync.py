"""Synchronized starts: three speakers on one machine, broadcasts with and without the sync (docs/sync.md).

Three daemons play into three rooms, channels of one clocked pipe sink recorded by one parec
(tests/rooms.py). The emulator's first chunk comes 90 to 170 ms after each request (a 90 ms delay plus up
to 80 ms of jitter, differently for each room), and every later chunk is jittered by up to 5 ms.
For each broadcast (new text each time: a cache hit would be no synthesis) it measures:
- the spread: between the first and the last room's first sample, to the sample;
- the latency: from the publish to the first room's first sample, as captured (the monitor's own delay
  is in both modes alike, so their difference is what the lead costs);
- the characters each room asked the emulator for (what Cartesia bills per broadcast to N rooms).

Run with `script/bench sync` (BENCH_SYNC_BROADCASTS, default 20). Writes benchmarks/results/sync.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import percentiles, write_results
from benchmarks.rig import rig
from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import BASE, Daemon, Observer
from tests.rooms import CHANNELS, NODELAY_BROKER, Rooms, onset, spread_ms
from tests.sound import RATE

RESULTS = Path(__file__).resolve().parent / "results"
LEAD = 0.5
MODES: list[tuple[str, dict[str, Any], bool]] = [
    ("synchronized", {}, False),  # the default all/say: the lead counts from each speaker's arrival
    ("synchronized_ts", {}, True),  # with "ts": the lead counts from the send time, the same everywhere
    ("unsynchronized", {"sync": False}, False),
]


def broadcast(  # noqa: PLR0913 - one broadcast to the rooms, with everything it is measured by
    rooms: Rooms, observer: Observer, daemons: list[Daemon], request_id: str, payload: dict[str, Any], stamp: bool
) -> tuple[float, float, int]:
    """(spread ms, publish-to-first-sample ms, the latest room's late_ms) of one all/say; `stamp`: with its
    send time in `ts`."""
    with rooms.capture() as capture:
        published = capture.signal().shape[0]
        sent = {"ts": time.time()} if stamp else {}
        observer.publish(f"{BASE}/all/say", json.dumps({"id": request_id, **payload, **sent}))
        for daemon in daemons:
            event = daemon.wait_terminal(request_id)
            assert event["event_type"] == "finished", event
        x = capture.wait_for_sound_then_silence(list(range(len(daemons))))
    first = min(o for room in range(len(daemons)) if (o := onset(x[:, room])) is not None)
    late = max(daemon.wait_for_event(request_id, "started")["late_ms"] or 0 for daemon in daemons)
    return spread_ms(x, list(range(len(daemons)))), (first - published) / RATE * 1000, late


def run(count: int) -> dict[str, Any]:
    with rig("mqtt-speaker-bench-sync-", server=Rooms, broker_config=NODELAY_BROKER) as parts:
        rooms = parts.pulse
        assert isinstance(rooms, Rooms)
        emulator = parts.emulator
        emulator.behaviour.first_chunk_jitter = 0.08
        emulator.behaviour.jitter = 0.005
        emulator.behaviour.real_time_factor = 0.2
        daemons: list[Daemon] = []
        try:
            for index in range(len(CHANNELS)):
                env = parts.daemon_env(
                    MQTT_SPEAKER_CACHE__ENABLED="false", MQTT_SPEAKER_SYNC__LEAD=str(LEAD), **rooms.room_env(index)
                )
                daemons.append(Daemon(parts.broker, parts.observer, env, parts.work).start(LOG_LEVEL="WARNING"))
            results: dict[str, Any] = {
                "machine": f"{platform.node()}: {platform.platform()}, {os.cpu_count()} cores",
                "rooms": len(daemons),
                "lead_s": LEAD,
                "broadcasts": count,
            }
            for mode, extra, stamp in MODES:
                results[mode] = measure_mode(rooms, parts.observer, emulator, daemons, mode, extra, stamp, count)
            return results
        finally:
            for daemon in daemons:
                daemon.stop()


def measure_mode(  # noqa: PLR0913 - one mode's broadcasts, on the rig's parts
    rooms: Rooms,
    observer: Observer,
    emulator: CartesiaEmulator,
    daemons: list[Daemon],
    mode: str,
    extra: dict[str, Any],
    stamp: bool,
    count: int,
) -> dict[str, Any]:
    spreads, latencies, billed, late = [], [], [], []
    for n in range(count):
        text = f"Announcement number {n} in {mode} mode: the laundry is done."
        spread, latency, latest = broadcast(rooms, observer, daemons, f"{mode}-{n}", {"text": text, **extra}, stamp)
        spreads.append(spread)
        late.append(latest)
        latencies.append(latency)
        billed.append(sum(len(c.transcript) for c in emulator.contexts_for(text)))
        assert billed[-1] == len(daemons) * len(text), (billed[-1], text)
    return {
        "spread_ms": {**percentiles(spreads), "max": max(spreads)},
        "spreads_ms": [round(v, 2) for v in spreads],
        "late_ms": late,  # per broadcast, the latest room's (its first audio came after the instant)
        "on_time_spread_max_ms": max((v for v, ms in zip(spreads, late, strict=True) if ms <= 10), default=0),
        "latency_ms": percentiles(latencies),
        "chars_billed": billed,
        "text_chars": [b // len(daemons) for b in billed],
    }


def report(results: dict[str, Any]) -> str:
    modes = [results[name] for name, _extra, _stamp in MODES]

    def row(name: str, pick: Any) -> str:
        return f"| {name} | " + " | ".join(f"{pick(mode):.1f}" for mode in modes) + " |"

    rooms, synced = results["rooms"], results["synchronized"]
    lines = [
        f"Machine: {results['machine']}. {rooms} speakers on this machine, {results['broadcasts']} all/say "
        f"broadcasts per mode, lead {results['lead_s']} s; emulator first chunk 90-170 ms, chunks jittered by 5 ms; "
        "mosquitto with set_tcp_nodelay.",
        "",
        '| measure | synchronized | synchronized, with `ts` | `"sync": false` |',
        "|---|---|---|---|",
        row("spread between rooms p50 (ms)", lambda m: m["spread_ms"]["p50"]),
        row("spread between rooms p95 (ms)", lambda m: m["spread_ms"]["p95"]),
        row("spread between rooms max (ms)", lambda m: m["spread_ms"]["max"]),
        row("... max when no room was late (ms)", lambda m: m["on_time_spread_max_ms"]),
        row("broadcasts with a room late by more than 10 ms", lambda m: sum(ms > 10 for ms in m["late_ms"])),
        row("publish to first sample p50 (ms)", lambda m: m["latency_ms"]["p50"]),
        row("publish to first sample p95 (ms)", lambda m: m["latency_ms"]["p95"]),
        row("characters billed per text character", lambda m: sum(m["chars_billed"]) / sum(m["text_chars"])),
        "",
        f"Synchronized within 10 ms every time: {'yes' if synced['spread_ms']['max'] <= 10 else 'no'}. The lead "
        f"costs {synced['latency_ms']['p50'] - results['unsynchronized']['latency_ms']['p50']:.0f} ms at the "
        f"median. Each speaker synthesizes its own copy: a broadcast to {rooms} rooms is billed {rooms} times "
        "its characters.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = run(int(os.environ.get("BENCH_SYNC_BROADCASTS", "20")))
    write_results("sync", results, report(results))


if __name__ == "__main__":
    main()
