"""The Home Assistant discovery payloads (the real Home Assistant test is test_homeassistant.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_speaker.protocol.discovery import discovery_messages, removal_messages
from mqtt_speaker.protocol.topics import Topics
from mqtt_speaker.settings import Settings
from tests.conftest import Broker, Observer
from tests.sound import wait_until


def settings(**values: object) -> Settings:
    return Settings(site="kitchen", **values)  # type: ignore[arg-type]


def topics_of(s: Settings) -> Topics:
    return Topics(s.base_topic, s.site, s.homeassistant.prefix)


def test_device_discovery_has_device_origin_availability_and_every_component() -> None:
    s = settings()
    [(topic, payload)] = discovery_messages(s, topics_of(s))
    assert topic == "homeassistant/device/kitchen/config"
    body = json.loads(payload)
    assert body["device"]["identifiers"] == ["mqtt-speaker-kitchen"] and body["device"]["name"] == "Kitchen speaker"
    assert set(body["origin"]) == {"name", "sw_version", "support_url"}
    assert body["availability_topic"] == "mqtt-speaker/kitchen/availability"
    platforms = sorted(c["platform"] for c in body["components"].values())
    expected = ["notify", "text", "select", "select", "number", "number", "switch", "switch", "button", "button"]
    expected += ["button"]
    expected += ["sensor", "sensor", "sensor", "binary_sensor", "event"]
    assert platforms == sorted(expected)
    for key, component in body["components"].items():
        assert component["object_id"] == f"kitchen_{key}"  # the same id before Home Assistant 2025.10
        assert component["default_entity_id"] == f"{component['platform']}.kitchen_{key}"
        assert component["unique_id"] == f"mqtt-speaker-kitchen-{key}"
    assert body["components"]["say"]["max"] == 255
    mute = body["components"]["mute"]
    assert (mute["platform"], mute["command_topic"]) == ("switch", "mqtt-speaker/kitchen/set/mute")
    assert mute["value_template"] == "{{ 'ON' if value_json.muted else 'OFF' }}"
    for key in ("speak", "say"):  # text that starts like JSON is still spoken as text
        assert body["components"][key]["command_template"] == '{{ {"text": value} | to_json }}'
        assert body["components"][key]["command_topic"] == "mqtt-speaker/kitchen/say"
    duck = body["components"]["duck_db"]
    assert duck["command_topic"] == "mqtt-speaker/kitchen/set/duck_db" and duck["unit_of_measurement"] == "dB"
    assert duck["value_template"] == "{{ value_json.duck_db }}" and (duck["min"], duck["max"]) == (0, 40)
    assert body["components"]["speech"]["event_types"] == ["queued", "started", "finished", "interrupted",
                                                           "dropped", "failed"]  # fmt: skip


def test_voice_select_uses_the_aliases() -> None:
    s = settings(voices={"Narrator": "id-1"})
    [(_, payload)] = discovery_messages(s, topics_of(s))
    assert json.loads(payload)["components"]["voice"]["options"] == ["Default", "Narrator"]
    assert s.voice_id("Narrator") == "id-1" and s.voice_name("id-1") == "Narrator"


def test_per_entity_discovery_for_older_home_assistant() -> None:
    s = settings(homeassistant={"per_entity": True, "prefix": "ha"})
    messages = dict(discovery_messages(s, topics_of(s)))
    assert len(messages) == 16
    stop = json.loads(messages["ha/button/kitchen/stop/config"])
    assert stop["command_topic"] == "mqtt-speaker/kitchen/stop" and stop["device"]["name"] == "Kitchen speaker"
    assert "platform" not in stop


def test_discovery_off_publishes_empty_payloads_and_removal_covers_both_forms() -> None:
    s = settings(homeassistant={"discovery": False})
    assert discovery_messages(s, topics_of(s)) == [("homeassistant/device/kitchen/config", "")]
    removal = removal_messages(topics_of(s), s)
    assert ("homeassistant/device/kitchen/config", "") in removal and len(removal) == 17


@pytest.mark.e2e
def test_discovery_remove_clears_the_retained_config(broker: Broker, observer: Observer, tmp_path: Path) -> None:
    observer.publish("homeassistant/device/kitchen/config", '{"old": true}', retain=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_SPEAKER_")}
    env.update(
        MQTT_SPEAKER_SITE="kitchen", MQTT_SPEAKER_MQTT__HOST="127.0.0.1", MQTT_SPEAKER_MQTT__PORT=str(broker.port)
    )
    (tmp_path / "empty.toml").write_text("")
    env["MQTT_SPEAKER_CONFIG"] = str(tmp_path / "empty.toml")
    result = subprocess.run(
        [sys.executable, "-m", "mqtt_speaker", "discovery", "--remove"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    observer.publish("homeassistant/sentinel", "last", retain=True)
    late = Observer(broker.port)
    try:
        late.client.subscribe("homeassistant/#", qos=1)
        wait_until(lambda: late.on("homeassistant/sentinel"), 10, "the retained sentinel")
        assert late.on("homeassistant/device/kitchen/config") == []  # nothing retained there any more
    finally:
        late.close()
