"""The daemon as a service: TLS and passwords, clean shutdown, systemd notifications, journal logs,
the persistent session and `mqtt-speaker check`, with real processes and a real broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.conftest import Broker, Daemon, Observer, spoken_ok, start_daemon
from tests.sound import PulseAudio, terminate, wait_until
from tests.tls import authority, signed

pytestmark = pytest.mark.e2e
PASSWORD = "s3cret-broker-password"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_", "JOURNAL_"))}
    return {**env, "MQTT_SPEAKER_CONFIG": os.environ["MQTT_SPEAKER_CONFIG"], **extra}


@pytest.fixture
def secure_broker(workdir: Path) -> Iterator[tuple[Broker, Path]]:
    """mosquitto with a TLS listener, a password file and no anonymous access."""
    tls = workdir / "tls"
    authority(tls)
    signed(tls, "server", "/CN=127.0.0.1", "IP:127.0.0.1,DNS:localhost")
    authority(tls, "other")
    passwd = workdir / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "speaker", PASSWORD], check=True)
    config = (
        "user root\nper_listener_settings false\nallow_anonymous false\n"
        f"password_file {passwd}\npersistence false\n"
        "listener {port} 127.0.0.1\n"
        f"cafile {tls / 'ca.crt'}\ncertfile {tls / 'server.crt'}\nkeyfile {tls / 'server.key'}\n"
    )
    broker = Broker(workdir, config)
    broker.start()
    yield broker, tls
    broker.stop()


def run_daemon(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return start_daemon(env, out)


def tls_env(broker: Broker, tls: Path, workdir: Path, pulse: PulseAudio, **extra: str) -> dict[str, str]:
    (workdir / "empty.toml").write_text("")
    settings = {
        "MQTT_SPEAKER_CONFIG": str(workdir / "empty.toml"),
        "MQTT_SPEAKER_SITE": "secure",
        "MQTT_SPEAKER_STATE_FILE": str(workdir / "state.json"),
        "MQTT_SPEAKER_MQTT__HOST": "127.0.0.1",
        "MQTT_SPEAKER_MQTT__PORT": str(broker.port),
        "MQTT_SPEAKER_MQTT__TLS": "true",
        "MQTT_SPEAKER_MQTT__CA_CERTS": str(tls / "ca.crt"),
        "MQTT_SPEAKER_MQTT__USERNAME": "speaker",
        "MQTT_SPEAKER_MQTT__PASSWORD": PASSWORD,
        "MQTT_SPEAKER_MQTT__RECONNECT_MAX_DELAY": "2",
        "MQTT_SPEAKER_AUDIO__DEVICE": "pulse",
        "MQTT_SPEAKER_LOG_LEVEL": "DEBUG",
    }
    return clean_env(**pulse.env, **{**settings, **extra})


def secure_observer(broker: Broker, tls: Path) -> Observer:
    return Observer(broker.port, tls=(str(tls / "ca.crt"), "speaker", PASSWORD))


def test_tls_with_a_password_works_and_secrets_stay_out_of_logs_and_messages(
    secure_broker: tuple[Broker, Path], workdir: Path, pulse: PulseAudio, emulator: CartesiaEmulator
) -> None:
    broker, tls = secure_broker
    observer = secure_observer(broker, tls)
    env = tls_env(broker, tls, workdir, pulse, CARTESIA_API_KEY=TEST_API_KEY, MQTT_SPEAKER_CARTESIA__URL=emulator.url)
    proc = run_daemon(env, workdir / "daemon.log")
    try:
        wait_until(lambda: observer.on("mqtt-speaker/secure/availability"), 30, "online over TLS")
        observer.publish("mqtt-speaker/secure/say", json.dumps({"id": "tls", "text": "Over TLS"}))
        wait_until(
            lambda: any(m.json().get("event_type") == "finished" for m in observer.on("mqtt-speaker/secure/event")),
            30,
            "speech over TLS",
        )
        check = subprocess.run(
            [sys.executable, "-m", "mqtt_speaker", "check"], env=env, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "ok    broker  connected to 127.0.0.1" in check.stdout and "(TLS) as speaker" in check.stdout
        assert PASSWORD not in check.stdout + check.stderr and TEST_API_KEY not in check.stdout + check.stderr
    finally:
        assert terminate(proc, 15) == 0
        observer.close()
    log = (workdir / "daemon.log").read_text()
    for secret in (PASSWORD, TEST_API_KEY):
        assert secret not in log
        assert all(secret.encode() not in m.payload for m in observer.messages)


@pytest.mark.parametrize("problem", ["wrong password", "unknown CA"])
def test_a_refused_connection_is_logged_once_and_retried(
    secure_broker: tuple[Broker, Path], workdir: Path, pulse: PulseAudio, problem: str
) -> None:
    broker, tls = secure_broker
    extra = (
        {"MQTT_SPEAKER_MQTT__PASSWORD": "wrong"}
        if problem == "wrong password"
        else {"MQTT_SPEAKER_MQTT__CA_CERTS": str(tls / "other.crt")}
    )
    log = workdir / "daemon.log"
    proc = run_daemon(tls_env(broker, tls, workdir, pulse, **extra), log)
    try:
        expected = "Not authorized" if problem == "wrong password" else "CERTIFICATE_VERIFY_FAILED"
        wait_until(lambda: expected in log.read_text(), 30, f"the log to say {expected}")
        # It keeps trying (with backoff) instead of exiting or spinning: several attempts, one line.
        # (paho's own DEBUG lines show each attempt: a CONNECT sent, or a TLS handshake that failed.)
        attempt = "Sending CONNECT" if problem == "wrong password" else "Connection failed, retrying"
        wait_until(lambda: log.read_text().count(attempt) >= 3, 30, "three attempts")
        assert proc.poll() is None
        warnings = [line for line in log.read_text().splitlines() if "WARNING mqtt_speaker.protocol.link" in line]
        assert len(warnings) == 1, warnings
        assert PASSWORD not in log.read_text() and "wrong" not in warnings[0]
    finally:
        assert terminate(proc, 15) == 0


def test_sigterm_fades_drops_the_queue_says_offline_and_exits_zero(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.say(json.dumps({"id": "long", "text": "x" * 100}))
    daemon.say(json.dumps({"id": "queued", "text": "Never spoken"}))
    daemon.wait_for_event("long", "started")
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 2.0
    assert daemon.wait_terminal("long")["reason"] == "shutdown"
    assert daemon.wait_terminal("queued")["reason"] == "shutdown"
    # Its last word (it waits for the broker's acknowledgement; the observer's copy may come a moment later).
    daemon.wait_offline()
    wait_until(lambda: (1000, "") in emulator.closes, 10, "the Cartesia socket closed with 1000")


def test_systemd_notifications_and_journal_logging(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], workdir: Path
) -> None:
    address = str(workdir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    messages: list[str] = []

    def receive_until(predicate: Callable[[str], bool]) -> None:
        while not any(predicate(m) for m in messages):
            messages.append(sock.recv(4096).decode())

    try:
        env = {**cartesia_env, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000", "JOURNAL_STREAM": "8:1234"}
        daemon = make_daemon(env)
        receive_until(lambda m: m.startswith("READY=1"))
        assert "STATUS=waiting for the broker" in messages[0]
        receive_until(lambda m: m.startswith("STATUS=speaking for"))
        pings = sum(m == "WATCHDOG=1" for m in messages)
        receive_until(lambda m: sum(x == "WATCHDOG=1" for x in messages) >= pings + 2)
        daemon.stop()
        receive_until(lambda m: m.startswith("STOPPING=1"))
    finally:
        sock.close()
    first_line = daemon.log().splitlines()[0]
    assert first_line.startswith(("DEBUG ", "INFO ")), first_line  # no timestamp: the journal adds its own


@pytest.mark.fault
def test_requests_sent_while_the_daemon_is_away_are_spoken_when_it_returns(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.stop()
    daemon.say(json.dumps({"id": "while-away", "text": "Kept for you by the broker"}))
    back = make_daemon(cartesia_env, site=daemon.site)
    spoken_ok(back, "while-away")


def test_check_reports_each_failure(workdir: Path, pulse: PulseAudio) -> None:
    (workdir / "empty.toml").write_text("")
    env = clean_env(
        **pulse.env,
        MQTT_SPEAKER_CONFIG=str(workdir / "empty.toml"),
        MQTT_SPEAKER_MQTT__HOST="127.0.0.1",
        MQTT_SPEAKER_MQTT__PORT="1",
        CARTESIA_API_KEY="sk_car_nothing_listens",
        MQTT_SPEAKER_CARTESIA__URL="ws://127.0.0.1:1",
        MQTT_SPEAKER_AUDIO__DEVICE="no-such-device",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mqtt_speaker", "check"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok    config")
    assert lines[1].startswith("FAIL  broker  cannot reach 127.0.0.1:1")
    assert lines[2].startswith("FAIL  speech  cartesia_unreachable")
    assert lines[3].startswith("FAIL  audio")
    assert "sk_car_nothing_listens" not in result.stdout + result.stderr
