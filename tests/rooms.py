"""Several rooms on one machine, heard on one clock: a multi-channel pipe sink, one remap sink per room.

Each room's daemon plays into its own sink (`room0`, `room1`, ...), which is one channel of a clocked
`module-pipe-sink` (`use_system_clock_for_timing=yes`: it renders in real time, unlike a null sink, which
renders ahead and rewinds, misplacing a stream that starts later). One `parec` of that sink's monitor
records every room, so their onsets compare to the sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import BASE, Broker, Daemon, Observer, spoken_ok
from tests.sound import RATE, PulseAudio, Signal, wait_until

CHANNELS = ("front-left", "front-right", "front-center")
# A broker that passes each packet on at once, as docs/sync.md advises: with mosquitto's defaults it may
# hold a message to one speaker for up to 40 ms (Nagle), and without a `ts` each speaker counts the lead
# from its own arrival (measured here: one room 47 ms after the others).
NODELAY_BROKER = "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
ROOMS_SINK = "rooms"


class Rooms(PulseAudio):
    """A private PulseAudio whose sink has one channel per room."""

    monitor = f"{ROOMS_SINK}.monitor"

    @property
    def sink_arguments(self) -> str:
        fifo = self.dir / "rooms.fifo"
        return (
            f"file={fifo} sink_name={ROOMS_SINK} format=s16le rate={RATE} channels={len(CHANNELS)} "
            f"channel_map={','.join(CHANNELS)} use_system_clock_for_timing=yes"
        )

    def start(self) -> Rooms:
        super().start()
        for index, channel in enumerate(CHANNELS):
            loaded = self.pactl(
                "load-module",
                "module-remap-sink",
                f"sink_name=room{index}",
                f"master={ROOMS_SINK}",
                "channels=1",
                f"master_channel_map={channel}",
                "channel_map=mono",
                "remix=no",
            )
            if loaded.returncode != 0:
                raise RuntimeError(f"cannot make room{index}: {loaded.stderr}")
        return self

    def room_env(self, index: int) -> dict[str, str]:
        """The environment that sends a PulseAudio client's sound into room `index`."""
        return {**self.env, "PULSE_SINK": f"room{index}"}

    def capture(self) -> RoomsCapture:  # type: ignore[override]
        return RoomsCapture(self)


class RoomsCapture:
    """Records every room at once, one column per room, from start() until stop()."""

    def __init__(self, rooms: Rooms) -> None:
        self._rooms = rooms
        self._file = Path(tempfile.mkstemp(prefix="rooms-", suffix=".raw", dir=rooms.dir)[1])
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RoomsCapture:
        with self._file.open("wb") as out:
            self._proc = subprocess.Popen(
                [
                    "parec",
                    "-d",
                    f"{ROOMS_SINK}.monitor",
                    "--format=s16le",
                    f"--rate={RATE}",
                    f"--channels={len(CHANNELS)}",
                    f"--channel-map={','.join(CHANNELS)}",
                    "--raw",
                    "--latency-msec=20",
                ],
                env={**os.environ, **self._rooms.env},
                stdout=out,
            )
        wait_until(lambda: self._file.stat().st_size > 0, 10, "parec to start recording")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
            self._proc = None

    def signal(self) -> Signal:
        """Samples x rooms."""
        data = np.frombuffer(self._file.read_bytes(), dtype="<i2")
        frames = data.size // len(CHANNELS)
        return data[: frames * len(CHANNELS)].reshape(frames, len(CHANNELS)).astype(np.float64) / 32768.0

    def wait_for_sound_then_silence(self, rooms: list[int], silence: float = 0.3, timeout: float = 60) -> Signal:
        """Wait until each of these rooms was heard and all are quiet for `silence` seconds."""

        def done() -> bool:
            x = self.signal()[:, rooms]
            loud = np.flatnonzero((np.abs(x) > THRESHOLD).any(axis=1))
            heard = all(onset(x[:, index]) is not None for index in range(len(rooms)))
            return heard and loud.size > 0 and (x.shape[0] - loud[-1]) / RATE >= silence

        wait_until(done, timeout, "every room to be heard, then silence", interval=0.1)
        return self.signal()


THRESHOLD = 0.01


def onset(x: Signal) -> int | None:
    """Index of the first sample louder than the threshold; None when the room stayed silent."""
    loud = np.flatnonzero(np.abs(x) > THRESHOLD)
    return int(loud[0]) if loud.size else None


def spread_ms(x: Signal, rooms: list[int]) -> float:
    """Milliseconds between the first and the last of these rooms' first sample."""
    onsets = [onset(x[:, room]) for room in rooms]
    assert all(o is not None for o in onsets), f"a room stayed silent: {onsets}"
    found = [o for o in onsets if o is not None]
    return (max(found) - min(found)) / RATE * 1000


def last_sample(x: Signal) -> int | None:
    """Index of the last sample louder than the threshold; None when the room stayed silent."""
    loud = np.flatnonzero(np.abs(x) > THRESHOLD)
    return int(loud[-1]) if loud.size else None


def end_spread_ms(x: Signal, rooms: list[int]) -> float:
    """Milliseconds between the first and the last of these rooms' last sample."""
    ends = [last_sample(x[:, room]) for room in rooms]
    assert all(e is not None for e in ends), f"a room stayed silent: {ends}"
    found = [e for e in ends if e is not None]
    return (max(found) - min(found)) / RATE * 1000


# ------------------------------------------------------------------------------------------ fixtures
# (tests/conftest.py loads this module as a plugin; a test module that plays rooms takes the broker
# without Nagle with `broker = pytest.fixture(name="broker")(nodelay_broker)`)

TARGET_MS = 10.0  # the floor every room must start (and, sharing, end) within
# This shared machine runs at a load of 5 to 15 on its 2 cores: the first request after a start took up
# to 750 ms to reach the sound device here, so the tests give the lead (default 0.5 s) more room.
LEAD = {"sync__lead": "1.0"}


def nodelay_broker(workdir: Path) -> Iterator[Broker]:
    """Like conftest's, with `set_tcp_nodelay true` (NODELAY_BROKER)."""
    server = Broker(workdir, NODELAY_BROKER)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rooms() -> Iterator[Rooms]:
    server = Rooms().start()
    yield server
    server.stop()


@pytest.fixture
def jittery(emulator: CartesiaEmulator) -> CartesiaEmulator:
    emulator.behaviour.first_chunk_delay = 0.05
    emulator.behaviour.first_chunk_jitter = 0.08
    emulator.behaviour.jitter = 0.005
    return emulator


@pytest.fixture
def start_rooms(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], rooms: Rooms, jittery: CartesiaEmulator
) -> Callable[..., list[Daemon]]:
    """Start one daemon per room (settings per room: a dict of MQTT_SPEAKER_* names, lower-case; a key
    `env` holds extra environment variables)."""

    def start(*per_room: dict[str, str]) -> list[Daemon]:
        settings = per_room or ({}, {}, {})
        started = []
        for index, values in enumerate(settings):
            extra = json.loads(values.get("env", "{}"))
            rest = {k: v for k, v in values.items() if k != "env"}
            started.append(make_daemon({**cartesia_env, **rooms.room_env(index), **extra}, **{**LEAD, **rest}))
        return started

    return start


def stamped(observer: Observer, payload: dict[str, Any], topic: str = f"{BASE}/all/say") -> Callable[[], None]:
    """A publish of `payload` with its send time in `ts`, as docs/sync.md advises and its Home Assistant
    example does: every room counts the lead from the same moment, whenever the message reaches it. (On
    this shared machine a daemon sometimes reads a message 15 to 25 ms after the others; counted from
    each arrival, that adds to the spread: `script/bench sync` measures both.)"""
    return lambda: observer.publish(topic, json.dumps({**payload, "ts": time.time()}))


def room_of(daemon: Daemon) -> int:
    """Which room a daemon plays into (its PULSE_SINK, room<n>)."""
    return int(daemon.env["PULSE_SINK"].removeprefix("room"))


def heard(
    rooms: Rooms, daemons: list[Daemon], request_id: str, publish: Callable[[], None]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Capture every room while `publish` sends the request(s); the recording and each room's `started`."""
    with rooms.capture() as capture:
        publish()
        for daemon in daemons:
            spoken_ok(daemon, request_id)
        x = capture.wait_for_sound_then_silence([room_of(daemon) for daemon in daemons])
    return x, [daemon.wait_for_event(request_id, "started") for daemon in daemons]
