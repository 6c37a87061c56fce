"""Several rooms on one machine, heard on one clock: a multi-channel pipe sink, one remap sink per room.

Each room's daemon plays into its own sink (`room0`, `room1`, ...), which is one channel of a clocked
`module-pipe-sink` (`use_system_clock_for_timing=yes`: it renders in real time, unlike a null sink, which
renders ahead and rewinds, misplacing a stream that starts later). One `parec` of that sink's monitor
records every room, so their onsets compare to the sample.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

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

    def wait_for_sound_then_silence(self, rooms: int, silence: float = 0.3, timeout: float = 60) -> Signal:
        """Wait until each of the first `rooms` rooms was heard and all are quiet for `silence` seconds."""

        def done() -> bool:
            x = self.signal()[:, :rooms]
            loud = np.flatnonzero((np.abs(x) > THRESHOLD).any(axis=1))
            heard = all(onset(x[:, room]) is not None for room in range(rooms))
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
