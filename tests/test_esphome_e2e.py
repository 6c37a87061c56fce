"""The daemon's ESPHome native API, through real clients: aioesphomeapi's own, at the release Home Assistant
2026.11 uses (46.x, the tests' own) and at 2025.4.4's (29.9.0, from that release's cached virtualenv),
run as a separate process (tests/esphome_client.py) against the daemon playing into the PulseAudio
capture, with mosquitto and the Cartesia emulator. Then hostile clients on raw sockets: none of them
affects the daemon or a well-behaved client."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cartesia_emulator import CartesiaEmulator, frequency_for
from tests.conftest import Daemon, free_port, port_open, spoken_ok
from tests.homeassistant.harness import cache_dir
from tests.media_server import TONES, MediaServer
from tests.sound import PulseAudio, frequency_track, sound_regions, wait_until

pytestmark = pytest.mark.e2e

CLIENT = Path(__file__).with_name("esphome_client.py")
KEY = base64.b64encode(b"k" * 32).decode()
WRONG_KEY = base64.b64encode(b"w" * 32).decode()


def old_client_python() -> Path | None:
    """The Python of Home Assistant 2025.4.4's cached virtualenv (aioesphomeapi 29.9.0), if it was built."""
    venvs = cache_dir().glob("homeassistant-2025.4.4-*/bin/python")
    found = sorted(p for p in venvs if (p.parents[1] / ".complete").exists())
    return found[-1] if found else None


@pytest.fixture(params=["46.23.0", "29.9.0"])
def python(request: pytest.FixtureRequest) -> str:
    if request.param == "46.23.0":
        return sys.executable
    found = old_client_python()
    if found is None:
        pytest.skip("Home Assistant 2025.4.4's virtualenv is not built yet (script/test -m homeassistant builds it)")
    return str(found)


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


def serving(
    make_daemon: Callable[..., Daemon], env: dict[str, str], key: str | None = None, **settings: str
) -> tuple[Daemon, int]:
    """A daemon serving the ESPHome API on a free loopback port (no mDNS), once it listens; and the port."""
    port = free_port()
    api = {"ESPHOME__PORT": str(port), "ESPHOME__HOST": "127.0.0.1", "ESPHOME__MDNS": "false"}
    daemon = make_daemon(env, **api, **({"ESPHOME__ENCRYPTION_KEY": key} if key else {}), **settings)
    wait_until(lambda: port_open(port), 20, "the ESPHome API to listen")
    return daemon, port


class Client:
    """tests/esphome_client.py running: the lines it printed so far, as they come."""

    def __init__(self, python: str, port: int, *steps: str, key: str | None = None) -> None:
        self._proc = subprocess.Popen(
            [python, "-P", str(CLIENT), "127.0.0.1", str(port), key or "-", *steps],  # -P: tests/ is not on the path
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def saw(self, step: str) -> dict[str, Any]:
        def said() -> bool:
            if any(s.get("step") == step or "error" in s for s in self.lines):
                return True
            assert self._proc.poll() is None, self.finish()  # it ended without saying it
            return False

        wait_until(said, 90, f"the client's {step}")
        found = next(s for s in self.lines if s.get("step") == step or "error" in s)
        assert "error" not in found, found
        return found

    def finish(self) -> list[dict[str, Any]]:
        self._proc.wait(120)
        self._reader.join(10)
        assert self._proc.stderr is not None
        assert self._proc.returncode == 0, (self.lines, self._proc.stderr.read()[-3000:])
        return self.lines


def run_client(python: str, port: int, *steps: str, key: str | None = None) -> dict[str, Any]:
    """The last thing the client said (its error, when it failed)."""
    done = subprocess.run(
        [python, "-P", str(CLIENT), "127.0.0.1", str(port), key or "-", *steps],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    return lines[-1]


def requests_from_esphome(daemon: Daemon) -> list[str]:
    return [e["id"] for e in daemon.events() if e["event_type"] == "queued" and e["id"].startswith("esphome-")]


def test_home_assistants_calls_reach_the_speaker_and_each_surface_shows_the_others_volume(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    pulse: PulseAudio,
    media: MediaServer,
    python: str,
) -> None:
    daemon, port = serving(make_daemon, cartesia_env, site="kitchen_2")
    with pulse.capture() as capture:
        run = Client(
            python,
            port,
            "info",
            "volume=0.35",
            "mute",
            "unmute",
            "announce=Dinner is ready",
            f"announce-media={media.url('tone.wav')}",
            "wait-volume=0.6",
        )
        info = run.saw("info")
        assert (info["name"], info["friendly_name"], info["uses_password"]) == (
            "kitchen-2-speaker",
            "Kitchen 2 speaker",
            False,
        )
        assert info["voice_assistant_feature_flags"] == 20  # API audio and announce: an assist satellite, output only
        assert info["api_version"].startswith("1.10") or info["api_version"] == "APIVersion(major=1, minor=10)"
        assert info["players"] == [{"key": 1, "object_id": "media_player", "name": "Media player"}]
        assert (info["state"], info["volume"], info["muted"]) == ("IDLE", 1.0, False)
        assert run.saw("volume") == {"step": "volume", "volume": 0.35, "muted": False}
        wait_until(lambda: any(s["volume"] == 35 for s in daemon.states()), 10, "the volume on the MQTT state")
        assert run.saw("mute")["muted"] is True
        wait_until(lambda: any(s["muted"] for s in daemon.states()), 10, "muted on the MQTT state")
        assert run.saw("unmute")["muted"] is False
        assert run.saw("announce") == {"step": "announce", "success": True}
        assert run.saw("announce-media") == {"step": "announce-media", "success": True}
        daemon.observer.publish(daemon.topic("set/volume"), "60")
        assert run.saw("wait-volume") == {"step": "wait-volume", "volume": 0.6, "muted": False}
        run.finish()
        x = capture.wait_for_sound_then_silence()
    spoken, played = requests_from_esphome(daemon)
    assert daemon.wait_terminal(spoken)["event_type"] == "finished"
    started = daemon.wait_for_event(spoken, "started")
    assert (started["engine"], started["emotion"]) == ("cartesia", "neutral")  # our engine, our defaults
    assert emulator.contexts_for("Dinner is ready")[0].done
    assert daemon.wait_for_event(played, "started")["engine"] == "media"
    assert daemon.events(spoken)[0]["priority"] == "high"  # esphome.announce_priority
    # Heard: the speech (the emulator's tone for the neutral emotion), then the announced media's tone.
    (first, *_), (*_, last) = sound_regions(x), sound_regions(x)
    track = frequency_track(x[first.start : last.end], frame=0.1)
    speech = [i for i, f in enumerate(track) if abs(f - frequency_for("neutral")) < 15]
    tone = [i for i, f in enumerate(track) if abs(f - TONES["tone.wav"][0]) < 15]
    assert len(speech) >= 5 and len(tone) >= 12 and max(speech) < min(tone), track


def test_play_media_plays_and_an_announcement_interrupts_it_and_stop_stops(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    pulse: PulseAudio,
    media: MediaServer,
    python: str,
) -> None:
    daemon, port = serving(make_daemon, cartesia_env)
    Client(
        python,
        port,
        "info",
        f"play={media.url('endless.mp3')}",
        "wait-state=playing",
        f"announce-url={media.url('tone.flac')}",
    ).finish()
    song, announcement = requests_from_esphome(daemon)
    interrupted = daemon.wait_terminal(song)
    assert (interrupted["event_type"], interrupted["reason"]) == ("interrupted", "priority")
    assert interrupted["by"] == announcement
    spoken_ok(daemon, announcement)
    assert daemon.events(announcement)[0]["priority"] == "high"
    assert daemon.events(song)[0]["priority"] == "normal"
    Client(
        python, port, "info", f"play={media.url('endless.mp3')}", "wait-state=playing", "stop", "wait-state=idle"
    ).finish()
    again = requests_from_esphome(daemon)[-1]
    stopped = daemon.wait_terminal(again)
    assert (stopped["event_type"], stopped["reason"]) == ("interrupted", "stop")


def test_an_unplayable_announcement_is_answered_at_once_and_the_error_is_on_mqtt(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], media: MediaServer, python: str
) -> None:
    daemon, port = serving(make_daemon, cartesia_env)
    began = time.monotonic()
    said = run_client(python, port, "info", f"announce-media={media.url('missing')}")
    assert said == {"step": "announce-media", "success": False} and time.monotonic() - began < 30
    (request,) = requests_from_esphome(daemon)
    failed = daemon.wait_terminal(request)
    assert (failed["event_type"], failed["code"]) == ("failed", "media_unavailable")
    daemon.wait_for_error(lambda e: e.get("id") == request and e["code"] == "media_unavailable")
    # Neither a message nor a URL: refused before it is queued, answered at once, with an error.
    assert run_client(python, port, "info", "announce-media=") == {"step": "announce-media", "success": False}
    daemon.wait_for_error(lambda e: e["code"] == "invalid_request" and e["field"] == "text")
    # Quiet mode drops it: answered as soon as it is dropped.
    daemon.observer.publish(daemon.topic("set/quiet"), "ON")
    wait_until(lambda: daemon.states()[-1]["quiet_now"], 10, "quiet")
    assert run_client(python, port, "info", "announce=Hush") == {"step": "announce", "success": False}


def test_encryption_with_the_right_key_works_and_anything_else_is_refused(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], python: str
) -> None:
    daemon, port = serving(make_daemon, cartesia_env, KEY)
    said = run_client(python, port, "info", "volume=0.5", "announce=Between us", key=KEY)
    assert said == {"step": "announce", "success": True}  # every message both ways, encrypted
    wait_until(lambda: daemon.states()[-1]["volume"] == 50, 10, "the volume set over the encrypted connection")
    assert run_client(python, port, "info", key=WRONG_KEY)["error"] == "InvalidEncryptionKeyAPIError"
    assert run_client(python, port, "info")["error"] == "RequiresEncryptionAPIError"
    assert KEY not in daemon.log() and KEY not in json.dumps(
        [m.json() for m in daemon.observer.messages if m.payload.startswith(b"{")]
    )
    _, plain = serving(make_daemon, cartesia_env)
    assert run_client(python, plain, "info", key=KEY)["error"] == "EncryptionPlaintextAPIError"


def test_a_port_already_taken_is_an_error_naming_the_setting_and_the_rest_runs_on(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = {"ESPHOME__PORT": str(port), "ESPHOME__HOST": "127.0.0.1", "ESPHOME__MDNS": "false"}
        daemon = make_daemon(cartesia_env, **api)
        error = daemon.wait_for_error(lambda e: e["code"] == "esphome_unavailable")
        assert error["field"] == "esphome.port" and f"127.0.0.1:{port}" in error["message"]
        daemon.say(json.dumps({"id": "still", "text": "Still speaking"}))
        spoken_ok(daemon, "still")
        assert "ESPHome API: cannot listen on" in daemon.log()


# ------------------------------------------------------------------------------------ hostile clients


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(15)
    return sock


def closed_by_server(sock: socket.socket, timeout: float = 15) -> tuple[bool, bytes]:
    """Whether the daemon closed the connection within `timeout`, and what it sent before."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False, received
    except OSError:
        pass
    return True, received


def hello() -> bytes:
    """A plaintext HelloRequest (type 1) with client_info 'x'."""
    return b"\x00\x03\x01\x0a\x01x"


def test_hostile_clients_affect_nothing_else(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], python: str
) -> None:
    daemon, port = serving(make_daemon, cartesia_env)
    cases = {
        "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "a varint that never ends": b"\x00\xff\xff\xff\xff\xff\xff",
        "a frame longer than any message": b"\x00\xff\xff\x7f\x01",
        "a message before its hello": b"\x00\x00\x09",  # DeviceInfoRequest
    }
    for what, data in cases.items():
        with connect(port) as sock:
            sock.sendall(data)
            closed, _ = closed_by_server(sock)
            assert closed, what
    # A message of an unknown type, and one that does not parse, after a hello: ignored, the connection lives.
    with connect(port) as sock:
        sock.sendall(hello() + b"\x00\x00\xf0\x7f" + b"\x00\x03\x41\xff\xff\xff")  # type 16368; a broken command
        sock.sendall(b"\x00\x00\x07")  # PingRequest
        received = b""
        while b"\x00\x00\x08" not in received:  # PingResponse
            received += sock.recv(4096)
    # A client that says nothing is dropped after 10 s.
    with connect(port) as sock:
        began = time.monotonic()
        closed, _ = closed_by_server(sock, timeout=20)
        assert closed and 9 < time.monotonic() - began < 15
    # Too many clients: past 8 at once, the next one is closed at once; the ones before are served.
    quiet = [connect(port) for _ in range(8)]
    try:
        with connect(port) as ninth:
            closed, _ = closed_by_server(ninth, timeout=5)
            assert closed
    finally:
        for sock in quiet:
            sock.close()
    # Through all of it: a well-behaved client is served, the daemon speaks, nothing was published as an error
    # (no request was made), and each was logged.
    assert run_client(python, port, "info")["step"] == "info"
    daemon.say(json.dumps({"id": "after", "text": "Still here"}))
    spoken_ok(daemon, "after")
    assert daemon.alive() and daemon.errors() == []
    log = daemon.log()
    for said in (
        "bad indicator byte 0x47",
        "a varint longer than 4 bytes",
        "a message of 2097151 bytes",
        "sent DeviceInfoRequest before its hello",
        "a message of a type this API does not know (16368)",
        "a malformed message of type 65",
        "said no hello within 10 s",
        "8 clients already connected",
    ):
        assert said in log, said
