"""A private PipeWire (with pipewire-pulse and WirePlumber, from Debian's packages), headless, for the
tests that must also hold on the sound server of Raspberry Pi OS: a session D-Bus of its own (WirePlumber
exits without one), a null sink named like PulseAudio's test sink, and the same pactl / parec interface."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

from tests.sound import RATE, SINK, PulseAudio, terminate, wait_until

PROGRAMS = ("dbus-daemon", "pipewire", "wireplumber", "pipewire-pulse")


def installed() -> bool:
    return all(shutil.which(program) for program in PROGRAMS)


class PipeWire(PulseAudio):
    """dbus-daemon, pipewire, wireplumber and pipewire-pulse in a private runtime directory."""

    def __init__(self) -> None:
        super().__init__()
        self._procs: list[subprocess.Popen[Any]] = []
        self._own_env = {
            **self.env,
            "HOME": str(self.dir),  # WirePlumber keeps state under $HOME: never the real one
            "XDG_STATE_HOME": str(self.dir / "state"),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.dir / 'bus'}",
        }

    def start(self) -> PipeWire:
        if not installed():
            raise RuntimeError(f"PipeWire is not installed (needs {', '.join(PROGRAMS)})")
        env = {**os.environ, **self._own_env}
        bus = ["dbus-daemon", "--session", f"--address={self._own_env['DBUS_SESSION_BUS_ADDRESS']}", "--nofork"]
        # One after the other, each once the one before answers: a WirePlumber started before PipeWire's
        # socket exists says "Failed to connect to PipeWire" and exits, and then nothing links any stream.
        steps: list[tuple[list[str], Callable[[], bool], str]] = [
            ([*bus, "--nopidfile"], (self.dir / "bus").exists, "the session bus"),
            (["pipewire"], (self.dir / "pipewire-0").exists, "PipeWire's socket"),
            (["pipewire-pulse"], lambda: self.pactl("info").returncode == 0, "pipewire-pulse to answer"),
            (["wireplumber"], lambda: "WirePlumber" in self.pactl("list", "clients").stdout, "WirePlumber"),
        ]
        try:
            for command, ready, what in steps:
                self._launch(command, env, ready, what)
            # never suspended when idle (WirePlumber's default is after 5 s): its monitor must always stream
            sink = f"sink_name={SINK} rate={RATE} channels=1 format=s16le"
            sink += " sink_properties=session.suspend-timeout-seconds=0"
            loaded = self.pactl("load-module", "module-null-sink", *sink.split())
            if loaded.returncode != 0:
                raise RuntimeError(f"cannot create the test sink: {loaded.stderr}")
            self.pactl("set-default-sink", SINK)
            wait_until(lambda: SINK in self.pactl("list", "short", "sinks").stdout, 10, "the test sink")
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, command: list[str], env: dict[str, str], ready: Callable[[], bool], what: str) -> None:
        """Start `command` and wait until `ready`; fail at once, with its log, if it exits meanwhile."""
        path = self.dir / f"{command[0]}.log"
        with path.open("wb") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self._procs.append(proc)

        def up() -> bool:
            if proc.poll() is not None:
                tail = path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{command[0]} exited with {proc.returncode}: {tail}")
            return ready()

        wait_until(up, 20, what)

    @contextlib.contextmanager
    def graph_stopped(self) -> Iterator[None]:
        """PipeWire's graph frozen (SIGSTOP): nothing plays, while pipewire-pulse still answers its clients."""
        graph = next(proc for proc in self._procs if proc.args == ["pipewire"])
        graph.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            graph.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            terminate(proc, 5)
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
