"""The rig every benchmark speaks through: the test PulseAudio (or the rooms' sink) and a timed capture of
it, mosquitto with an observer, and the Cartesia emulator; started in a directory of its own and stopped
again, also on failure."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.conftest import Broker, Observer
from tests.sound import RATE, PulseAudio, parec_args, wait_until

FIRST_CHUNK = 0.090
THRESHOLD = 0.01


class TimedCapture:
    """parec into memory, with the arrival time of every block, to map samples onto the wall clock."""

    def __init__(self, pulse: PulseAudio) -> None:
        self._pulse = pulse
        self._data = bytearray()
        self._marks: list[tuple[float, int]] = []  # (arrival time, samples received so far)
        self._lock = threading.Lock()
        self._proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        before = self.samples()
        proc = subprocess.Popen(
            parec_args(self._pulse.monitor), env={**os.environ, **self._pulse.env}, stdout=subprocess.PIPE
        )
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        wait_until(lambda: self.samples() > before, 10, "parec")
        return proc

    @contextmanager
    def detached(self) -> Iterator[None]:
        """No capture for a while: a capture client asks for 20 ms of latency, which lowers the sink's own
        (a pipe sink's, a null sink's, an ALSA sink's). Meanwhile the sink is at its own latency, as where
        nothing records it; what is captured after goes on in the same record."""
        self.stop()
        try:
            yield
        finally:
            self._proc = self._start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while block := proc.stdout.read1(2048):  # type: ignore[attr-defined]
            now = time.monotonic()
            with self._lock:
                self._data += block
                self._marks.append((now, len(self._data) // 2))

    def samples(self) -> int:
        with self._lock:
            return len(self._data) // 2

    def signal(self, start: int = 0) -> np.ndarray:
        """Samples from index `start` on (copying only those: polling must not load the machine)."""
        with self._lock:
            end = len(self._data) // 2 * 2
            return np.frombuffer(bytes(self._data[start * 2 : end]), dtype="<i2") / 32768.0

    def time_of(self, index: int) -> float:
        with self._lock:
            for arrival, total in self._marks:
                if total > index:
                    return arrival - (total - index) / RATE
        raise ValueError("not captured yet")

    def index_at(self, moment: float) -> int:
        with self._lock:
            for arrival, total in self._marks:
                if arrival >= moment:
                    return max(0, total - int((arrival - moment) * RATE))
        return self.samples()

    def onset_after(self, moment: float, timeout: float = 30) -> float:
        start = self.index_at(moment)
        found: list[int] = []

        def heard() -> bool:
            x = self.signal(start)
            loud = np.flatnonzero(np.abs(x) > THRESHOLD)
            if loud.size:
                found.append(start + int(loud[0]))
            return bool(found)

        wait_until(heard, timeout, "sound")
        return self.time_of(found[0])

    def quiet_for(self, seconds: float, timeout: float = 60) -> None:
        need = int(seconds * RATE)

        def quiet() -> bool:
            tail = self.signal(max(0, self.samples() - need))
            return tail.size >= need and float(np.abs(tail).max()) < THRESHOLD

        wait_until(quiet, timeout, "silence", interval=0.05)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)


class Rig(NamedTuple):
    """What every benchmark speaks through: the test PulseAudio and its capture, mosquitto with an
    observer, and the Cartesia emulator (first chunk after FIRST_CHUNK, speech at four times real time)."""

    work: Path
    pulse: PulseAudio
    broker: Broker
    emulator: CartesiaEmulator
    observer: Observer
    capture: TimedCapture

    def daemon_env(self, **settings: str) -> dict[str, str]:
        """A daemon speaking Cartesia (the emulator, no fallback) into the capture, with an empty config
        file and its state (the state file, the ducking record, the cache) in the benchmark's directory."""
        (self.work / "empty.toml").write_text("")
        return {
            "CARTESIA_API_KEY": TEST_API_KEY,
            "MQTT_SPEAKER_CARTESIA__URL": self.emulator.url,
            "MQTT_SPEAKER_FALLBACK": "[]",
            "MQTT_SPEAKER_CACHE__DIR": str(self.work / "cache"),
            "XDG_STATE_HOME": str(self.work / "state"),  # not the home directory
            "MQTT_SPEAKER_AUDIO__DEVICE": "pulse",
            "MQTT_SPEAKER_CONFIG": str(self.work / "empty.toml"),
            **self.pulse.env,
            **settings,
        }


@contextmanager
def rig(
    prefix: str, *, server: Callable[[], PulseAudio] = PulseAudio, broker_config: str | None = None
) -> Iterator[Rig]:
    """The rig, in a directory of its own; everything started is stopped again, also on failure. `server`:
    the sound server (the rooms' for several speakers); `broker_config`: mosquitto's (tests.conftest.Broker)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    with ExitStack() as started:
        pulse = server().start()
        started.callback(pulse.stop)
        broker = Broker(work, broker_config)
        broker.start()
        started.callback(broker.stop)
        emulator = CartesiaEmulator().start()
        started.callback(emulator.stop)
        emulator.behaviour.first_chunk_delay = FIRST_CHUNK
        emulator.behaviour.real_time_factor = 0.25
        observer = Observer(broker.port)
        started.callback(observer.close)
        capture = TimedCapture(pulse)
        started.callback(capture.stop)
        yield Rig(work, pulse, broker, emulator, observer, capture)
