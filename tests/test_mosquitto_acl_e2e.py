"""config/mosquitto-acl.example in a real mosquitto: every documented command topic, published by the
Home Assistant user the file names, reaches the speaker it names (site "kitchen", in a group), which
acts on it; what the speaker publishes reaches Home Assistant; and what the file means to forbid is
refused (a speaker making another talk, anyone but the speaker writing its status)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from mqtt_speaker.protocol.discovery import discovery_messages
from mqtt_speaker.protocol.topics import Command, Topics
from mqtt_speaker.settings import HomeAssistantSettings, Settings
from tests.conftest import BASE, ROOT, Broker, Daemon, Observer, spoken_ok
from tests.sound import wait_until

pytestmark = pytest.mark.e2e

ACL = ROOT / "config" / "mosquitto-acl.example"
HOME_ASSISTANT = ("homeassistant", "ha-password")
SPEAKER = ("speaker-kitchen", "speaker-password")
GROUP = "downstairs"

# A payload each command acts on; the says and streams come last (nothing stops or clears them).
PAYLOADS: dict[Command, str] = {
    Command.STOP: "",
    Command.SKIP: "PRESS",
    Command.CLEAR: '{{"below": "high"}}',
    Command.SET_VOLUME: "60",
    Command.SET_EMOTION: "calm",
    Command.SET_VOICE: "6ccbfb76-1fc6-48f7-b71d-91ac6298247b",
    Command.SET_QUIET: "OFF",
    Command.SET_DUCK_DB: "10",
    Command.CACHE_CLEAR: "",
    Command.CACHE_WARM: '["Good morning"]',
    Command.SAY: '{{"id": "{id}", "text": "Hello"}}',
    Command.SAY_STREAM: '{{"id": "{id}", "seq": 0, "text": "Hello.", "end": true}}',
}


@pytest.fixture
def acl_broker(workdir: Path) -> Iterator[Broker]:
    """mosquitto with passwords and the example ACL file itself."""
    passwords = workdir / "passwd"
    for user, password in (HOME_ASSISTANT, SPEAKER):
        create = ["-c"] if not passwords.exists() else []
        subprocess.run(["mosquitto_passwd", *create, "-b", str(passwords), user, password], check=True)
    config = (
        "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"password_file {passwords}\nacl_file {ACL}\n"
    )
    server = Broker(workdir, config)
    server.start()
    yield server
    server.stop()


def publish_refused(broker: Broker, auth: tuple[str, str], topic: str) -> bool:
    """Publish at QoS 1 as `auth`'s user: True when the broker refuses it (MQTT 5's PUBACK says so)."""
    reasons: dict[int, bool] = {}
    client = paho.Client(
        CallbackAPIVersion.VERSION2, f"probe-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(*auth)
    client.on_publish = lambda _c, _u, mid, reason, _p: reasons.__setitem__(mid, reason.is_failure)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, "{}", qos=1)
        info.wait_for_publish(10)
        wait_until(lambda: info.mid in reasons, 10, f"the broker's answer to {topic}")
        return reasons[info.mid]
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_example_acl_lets_every_documented_feature_through_and_nothing_else(
    acl_broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    home = Observer(acl_broker.port, auth=HOME_ASSISTANT, topics=(f"{BASE}/#", "homeassistant/#"))
    topics = Topics(BASE, "kitchen", groups=(GROUP,))
    heard = Observer(
        acl_broker.port, auth=SPEAKER, topics=(*topics.command_subscriptions(), topics.homeassistant_status)
    )
    try:

        def probe() -> bool:  # Home Assistant's status topic, until the speaker's own client has subscribed
            home.publish("homeassistant/status", "probe")
            return bool(heard.messages)

        wait_until(probe, 10, "the speaker's client to subscribe")
        heard.messages.clear()
        env = {
            "MQTT_SPEAKER_ENGINE": "espeak",
            "MQTT_SPEAKER_MQTT__USERNAME": SPEAKER[0],
            "MQTT_SPEAKER_MQTT__PASSWORD": SPEAKER[1],
            "MQTT_SPEAKER_SYNC__GROUPS": f'["{GROUP}"]',
            "MQTT_SPEAKER_SYNC__LEAD": "0.2",
        }
        daemon = make_daemon(env, site="kitchen", on=(acl_broker, home))
        wait_until(
            lambda: bool(home.on("homeassistant/device/kitchen/config")), 10, "discovery, seen by Home Assistant"
        )

        sent: list[str] = []
        says: list[str] = []
        for command, template in PAYLOADS.items():
            for topic in (
                topics.command(command),
                topics.command(command, "all"),
                topics.group_command(command, GROUP),
            ):
                request_id = f"{command.value.replace('/', '-')}-{len(sent)}"
                home.publish(topic, template.format(id=request_id))
                sent.append(topic)
                if command in (Command.SAY, Command.SAY_STREAM):
                    says.append(request_id)
        assert sorted(sent) == sorted(topics.command_subscriptions())  # every command topic of the speaker
        wait_until(lambda: {m.topic for m in heard.messages} >= set(sent), 10, "every command at the speaker's user")
        for request_id in says:  # acted on, and its events reach Home Assistant
            spoken_ok(daemon, request_id)
        wait_until(lambda: daemon.states()[-1]["volume"] == 60, 10, "the set commands acted on, in the state")
        home.publish(topics.command(Command.SET_VOLUME), "loud")  # an error reaches Home Assistant too
        assert daemon.wait_for_error(lambda e: e["code"] == "invalid_command")["field"] == "volume"

        # mqtt-speaker say on the speaker itself, with the service's user
        assert not publish_refused(acl_broker, SPEAKER, topics.command(Command.SAY))
        # A broadcast's shared audio, which any room may synthesize for the house
        for kind in ("start", "audio"):
            assert not publish_refused(acl_broker, SPEAKER, topics.shared_topic("0123456789abcdef", kind))
        # The other discovery form is published, and the first one cleared, by the speaker's user
        daemon.stop()
        daemon.wait_offline()
        daemon = make_daemon(
            {**env, "MQTT_SPEAKER_HOMEASSISTANT__PER_ENTITY": "true"}, site="kitchen", on=(acl_broker, home)
        )
        per_entity = Settings(site="kitchen", homeassistant=HomeAssistantSettings(per_entity=True))
        expected = {topic for topic, payload in discovery_messages(per_entity, topics) if payload}

        def both_forms() -> bool:
            cleared = home.on("homeassistant/device/kitchen/config")[-1].payload == b""
            return cleared and {m.topic for m in home.messages if m.topic in expected} == expected

        wait_until(both_forms, 10, "the per-entity discovery published, the device form cleared")

        # What the file forbids: a speaker making another (or every one) talk; anyone writing a status not its own
        for auth, topic in [
            (SPEAKER, f"{BASE}/bedroom/say"),
            (SPEAKER, f"{BASE}/all/say"),
            (SPEAKER, f"{BASE}/bedroom/state"),
            (HOME_ASSISTANT, f"{BASE}/kitchen/state"),
            (HOME_ASSISTANT, f"{BASE}/kitchen/availability"),
            (HOME_ASSISTANT, topics.shared_topic("0123456789abcdef", "audio")),  # only speakers make the audio
        ]:
            assert publish_refused(acl_broker, auth, topic), (auth[0], topic)
    finally:
        heard.close()
        home.close()
