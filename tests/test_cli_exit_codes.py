"""The command line's exit codes, and a bad Cartesia URL as a configuration error (not a traceback)."""

from __future__ import annotations

import pytest

from tests.conftest import Broker, free_port
from tests.test_cli import cli

KEY = {"CARTESIA_API_KEY": "sk_car_not_used"}


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_cartesia_url_with_an_impossible_port_is_a_configuration_error(command: str) -> None:
    result = cli(command, env={**KEY, "MQTT_SPEAKER_CARTESIA__URL": "ws://127.0.0.1:99999"}, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cartesia.url" in result.stderr and "invalid port" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_say_exits_3_when_the_broker_cannot_be_reached() -> None:
    result = cli("say", "hello", env={"MQTT_SPEAKER_MQTT__HOST": "127.0.0.1", "MQTT_SPEAKER_MQTT__PORT": "1"})
    assert result.returncode == 3, result.stdout + result.stderr


def test_say_wait_exits_4_without_a_terminal_event_in_time(broker: Broker) -> None:
    env = {"MQTT_SPEAKER_MQTT__HOST": "127.0.0.1", "MQTT_SPEAKER_MQTT__PORT": str(broker.port)}
    result = cli("say", "nobody listens", "--site", "nobody", "--wait", "--timeout", "1", env=env)
    assert result.returncode == 4, result.stdout + result.stderr


def test_check_exits_1_when_a_check_fails() -> None:
    port = str(free_port())  # nothing listens there
    result = cli("check", env={"MQTT_SPEAKER_MQTT__HOST": "127.0.0.1", "MQTT_SPEAKER_MQTT__PORT": port})
    assert result.returncode == 1, result.stdout + result.stderr
    assert any(line.startswith("FAIL  broker") for line in result.stdout.splitlines()), result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MQTT_SPEAKER_SYNC__GROUPS", "downstairs"),  # plain words for a list: taken as the list
        ("MQTT_SPEAKER_SYNC__GROUPS", "downstairs, bedrooms"),
        ("MQTT_SPEAKER_FALLBACK", "espeak"),
        ("MQTT_SPEAKER_SYNC__GROUPS", '["downstairs"]'),
    ],
)
def test_a_list_setting_in_the_environment_takes_plain_words(variable: str, value: str) -> None:
    result = cli("discovery", env={variable: value})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [("MQTT_SPEAKER_VOICES", "Narrator", "voices"), ("MQTT_SPEAKER_FALLBACK", "klingon", "fallback")],
)
def test_a_setting_in_the_environment_that_cannot_be_read_exits_2_naming_it(
    variable: str, value: str, named: str
) -> None:
    result = cli("discovery", env={variable: value})
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
