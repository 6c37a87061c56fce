"""The command line, run as a real process: say, devices, run, and its errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import Broker, Daemon, Observer, free_port, start_daemon
from tests.sound import PulseAudio, wait_until


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_"))}
    clean["MQTT_SPEAKER_CONFIG"] = os.environ["MQTT_SPEAKER_CONFIG"]  # the test's empty one, never /etc's
    return subprocess.run(
        [sys.executable, "-m", "mqtt_speaker", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def broker_env(broker: Broker, daemon: Daemon) -> dict[str, str]:
    return {
        "MQTT_SPEAKER_MQTT__HOST": "127.0.0.1",
        "MQTT_SPEAKER_MQTT__PORT": str(broker.port),
        "MQTT_SPEAKER_SITE": daemon.site,
    }


@pytest.mark.e2e
def test_say_wait_prints_the_finished_event(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], broker: Broker
) -> None:
    daemon = make_daemon(cartesia_env)
    result = cli("say", "Hello from the command line", "--emotion", "happy", "--wait", env=broker_env(broker, daemon))
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    assert event["event_type"] == "finished" and event["duration_ms"] > 0
    started = daemon.wait_for_event(event["id"], "started")
    assert started["emotion"] == "happy"


@pytest.mark.e2e
def test_say_wait_exits_non_zero_when_the_request_fails(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], broker: Broker
) -> None:
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_CARTESIA__VOICE": "invalid-voice"})
    result = cli("say", "This voice does not exist", "--wait", env=broker_env(broker, daemon))
    assert result.returncode == 1
    event = json.loads(result.stdout)
    assert event["event_type"] == "failed" and event["code"] == "synthesis_failed"
    assert "invalid-voice" in event["message"]


@pytest.mark.e2e
def test_say_without_wait_prints_the_request_id(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], broker: Broker
) -> None:
    daemon = make_daemon(cartesia_env)
    result = cli("say", "Fire and forget", "--id", "ff-1", env=broker_env(broker, daemon))
    assert result.returncode == 0 and result.stdout.strip() == "ff-1"
    assert daemon.wait_terminal("ff-1")["event_type"] == "finished"


def test_say_reports_an_unreachable_broker() -> None:
    port = free_port()
    result = cli("say", "hello", env={"MQTT_SPEAKER_MQTT__HOST": "127.0.0.1", "MQTT_SPEAKER_MQTT__PORT": str(port)})
    assert result.returncode == 3
    assert f"cannot reach the broker at 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("site = [unclosed", "cannot be read"),
        ('site = "Not A Valid Site!"', "site: Value error, must be lower-case"),
        ("[mqtt]\nport = 99999", "mqtt.port"),
        ("no_such_setting = 1", "no_such_setting"),
    ],
)
def test_a_bad_config_file_gets_a_clear_message(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content)
    result = cli("--config", str(config), "run")
    assert result.returncode == 2
    assert str(config) in result.stderr and expected in result.stderr, result.stderr


def test_a_missing_config_file_gets_a_clear_message(tmp_path: Path) -> None:
    result = cli("run", env={"MQTT_SPEAKER_CONFIG": str(tmp_path / "nope.toml")})
    assert result.returncode == 2 and "nope.toml does not exist" in result.stderr


@pytest.mark.e2e
def test_devices_lists_outputs_with_their_sample_rate(pulse: PulseAudio) -> None:
    result = cli("devices", env=pulse.env)
    assert result.returncode == 0, result.stderr
    assert any("pulse" in line and "44100 Hz" in line for line in result.stdout.splitlines()), result.stdout


@pytest.mark.e2e
def test_run_waits_for_a_broker_that_is_down_at_start(
    workdir: Path, pulse: PulseAudio, emulator: CartesiaEmulator
) -> None:
    broker = Broker(workdir)  # not started yet
    log = workdir / "daemon.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_"))},
        **pulse.env,
        "MQTT_SPEAKER_CONFIG": str(workdir / "empty.toml"),
        "MQTT_SPEAKER_SITE": "lateb",
        "MQTT_SPEAKER_MQTT__HOST": "127.0.0.1",
        "MQTT_SPEAKER_MQTT__PORT": str(broker.port),
        "MQTT_SPEAKER_MQTT__RECONNECT_MAX_DELAY": "2",
    }
    (workdir / "empty.toml").write_text("")
    with log.open("wb") as out:
        proc = start_daemon(env, out)
    try:
        wait_until(lambda: "cannot reach the broker" in log.read_text(), 30, "the daemon to say the broker is down")
        assert proc.poll() is None
        broker.start()
        observer = Observer(broker.port)
        try:
            wait_until(
                lambda: [m.payload for m in observer.on("mqtt-speaker/lateb/availability")] == [b"online"],
                30,
                "online after the broker came up",
            )
        finally:
            observer.close()
        assert log.read_text().count("cannot reach the broker") == 1  # one line, not one per retry
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        broker.stop()
