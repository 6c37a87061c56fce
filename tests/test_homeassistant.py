"""Discovery against a real Home Assistant Core: the speaker appears as one device, every entity works.

Runs against the oldest release the README supports (on the host, a pyenv Python) and the newest
(Python 3.14, inside a cached Debian sid root; marked `platform`). Starts mosquitto, Home Assistant, the
daemon with the Cartesia emulator, and the PulseAudio capture; checks everything through Home
Assistant's REST API, with the entity ids docs/home-assistant.md documents for each release. Skipped,
saying why, only when no Python that can run the oldest release is on the machine.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import netns
from tests.cartesia_emulator import CartesiaEmulator, frequency_for
from tests.conftest import Broker, Daemon, free_port, port_open
from tests.homeassistant.harness import NEWEST, HomeAssistant, Release, find_release, install
from tests.media_server import TONES, MediaServer
from tests.platform.roots import sigterm_runs_cleanup
from tests.sound import RATE, PulseAudio, dominant_frequency, sound_regions, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.homeassistant]

SITE = "kitchen"  # the device is then "Kitchen speaker", as in docs/home-assistant.md
# role: platform. Every release makes the same ids, <platform>.kitchen_<role>: since 2025.10 from the
# default_entity_id that discovery sends, before it from the object_id sent beside it.
ROLES = {
    "speak": "notify",
    "say": "text",
    "emotion": "select",
    "voice": "select",
    "volume": "number",
    "mute": "switch",
    "duck_db": "number",
    "quiet": "switch",
    "stop": "button",
    "skip": "button",
    "clear": "button",
    "state": "sensor",
    "queue_length": "sensor",
    "engine": "sensor",
    "problem": "binary_sensor",
    "speech": "event",
}
DOCUMENTED = {role: f"{platform}.kitchen_{role}" for role, platform in ROLES.items()}  # docs/home-assistant.md
VOICES = {"Narrator": "6ccbfb76-1fc6-48f7-b71d-91ac6298247b", "Butler": "butler-voice-id"}


def oldest() -> Release:
    found = find_release()
    if found is None:
        pytest.skip("no Python 3.13.0 or 3.12.1 under pyenv: Home Assistant cannot be installed on this machine")
    return found[0]


@pytest.fixture(params=["oldest", pytest.param("newest", marks=pytest.mark.platform)])
def homeassistant(request: pytest.FixtureRequest, broker: Broker) -> Iterator[HomeAssistant]:
    release = oldest() if request.param == "oldest" else NEWEST
    with sigterm_runs_cleanup():
        ha = HomeAssistant(install(release), free_port(), broker.port)
        try:
            ha.start()
            ha.onboard()
            yield ha
        finally:
            ha.remove()


class Entities:
    """The speaker's entities in one Home Assistant, by role."""

    def __init__(self, ha: HomeAssistant) -> None:
        self.ha = ha
        self.ids = DOCUMENTED

    def state(self, role: str) -> dict[str, Any]:
        found = self.ha.state(self.ids[role])
        assert found is not None, f"{self.ids[role]} does not exist"
        return found

    def value(self, role: str) -> str:
        return str(self.state(role)["state"])

    def available(self) -> list[str]:
        states = {s["entity_id"]: s["state"] for s in self.ha.request("GET", "/api/states")}
        return sorted(e for e in self.ids.values() if states.get(e) not in (None, "unavailable"))

    def wait_value(self, role: str, expected: str, timeout: float = 30) -> None:
        wait_until(lambda: self.value(role) == expected, timeout, f"{self.ids[role]} to be {expected!r}")

    def press(self, role: str) -> None:
        self.ha.call("button", "press", entity_id=self.ids[role])


def test_home_assistant_sees_the_speaker_and_drives_every_entity(  # noqa: PLR0915 - one Home Assistant start drives every entity (it takes a minute to start)
    homeassistant: HomeAssistant,
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    pulse: PulseAudio,
    broker: Broker,
) -> None:
    ha = homeassistant
    entities = Entities(ha)
    ids = entities.ids
    every = sorted(ids.values())
    daemon = make_daemon(cartesia_env, site=SITE, VOICES=json.dumps(VOICES))

    # Every entity exists, with the documented id, under one device, available, with the daemon's values.
    wait_until(lambda: entities.available() == every, 60, f"the entities; so far {entities.available()}", interval=0.5)
    print(f"Home Assistant {ha.version}: {', '.join(every)}")
    grouped = ha.template(f"{{{{ device_entities(device_id('{ids['speak']}')) | sort | join(',') }}}}")
    assert grouped.split(",") == every
    assert ha.template(f"{{{{ device_attr(device_id('{ids['speak']}'), 'name') }}}}") == "Kitchen speaker"
    assert float(entities.value("volume")) == 100
    assert entities.value("emotion") == "neutral"
    assert entities.state("voice")["attributes"]["options"] == ["Narrator", "Butler"]
    assert entities.value("voice") == "Narrator"
    assert entities.value("quiet") == "off"
    assert entities.value("state") == "idle"
    assert entities.value("queue_length") == "0"
    assert entities.value("engine") == "cartesia"
    assert entities.value("problem") == "off"
    assert entities.value("mute") == "off"

    # What the notify and text entities send is spoken as text, even when it starts like JSON.
    ha.call("notify", "send_message", entity_id=ids["speak"], message="[Alarm] Front door opened")
    ha.call("text", "set_value", entity_id=ids["say"], value='"Hello", said the fox')
    for text in ("[Alarm] Front door opened", '"Hello", said the fox'):
        wait_until(lambda: any(c.done for c in emulator.contexts_for(text)), 30, f"{text!r} spoken")  # noqa: B023 - used at once
    assert not [e for e in daemon.errors() if e["code"] == "invalid_request"]

    # notify.send_message makes it speak; the Speech event entity shows `finished`.
    with pulse.capture() as capture:
        ha.call("notify", "send_message", entity_id=ids["speak"], message="Dinner is ready")
        wait_until(
            lambda: entities.state("speech")["attributes"].get("event_type") == "finished",
            30,
            "the Speech event to show finished",
        )
        assert sound_regions(capture.wait_for_sound_then_silence())
    assert emulator.contexts_for("Dinner is ready")[0].done

    # The Emotion select changes the emotion of the next utterance, which the Say text speaks.
    ha.call("select", "select_option", entity_id=ids["emotion"], option="sad")
    entities.wait_value("emotion", "sad")
    ha.call("text", "set_value", entity_id=ids["say"], value="Feeling blue")
    wait_until(lambda: any(c.done for c in emulator.contexts_for("Feeling blue")), 30, "the text spoken")
    assert emulator.contexts_for("Feeling blue")[0].emotion == "sad"

    # The Voice select picks a voice by its name; the next utterance is made with that voice's id.
    ha.call("select", "select_option", entity_id=ids["voice"], option="Butler")
    entities.wait_value("voice", "Butler")
    ha.call("notify", "send_message", entity_id=ids["speak"], message="At your service")
    wait_until(lambda: any(c.done for c in emulator.contexts_for("At your service")), 30, "the butler spoken")
    (context,) = emulator.contexts_for("At your service")
    frame = next(f for f in emulator.frames if f.get("context_id") == context.context_id)
    assert frame["voice"] == "butler-voice-id"

    # The Mute switch mutes (the state shows it) and reads it back.
    ha.call("switch", "turn_on", entity_id=ids["mute"])
    wait_until(lambda: daemon.states()[-1]["muted"] is True, 20, "muted in the retained state")
    entities.wait_value("mute", "on")
    ha.call("switch", "turn_off", entity_id=ids["mute"])
    entities.wait_value("mute", "off")

    # The Volume number changes the retained state (and reads it back).
    ha.call("number", "set_value", entity_id=ids["volume"], value=35)
    wait_until(lambda: daemon.states()[-1]["volume"] == 35, 20, "the volume in the retained state")
    wait_until(lambda: float(entities.value("volume")) == 35, 20, "the volume read back")
    # So does the Music ducking number (the depth, in dB).
    assert float(entities.value("duck_db")) == 12
    ha.call("number", "set_value", entity_id=ids["duck_db"], value=20)
    wait_until(lambda: daemon.states()[-1]["duck_db"] == 20, 20, "the ducking depth in the retained state")
    wait_until(lambda: float(entities.value("duck_db")) == 20, 20, "the ducking depth read back")

    # Queue length shows what waits; the Clear queue button drops it; Skip ends what plays; so does Stop.
    daemon.say(json.dumps({"id": "long", "text": "x" * 300}))
    daemon.wait_for_event("long", "started")
    entities.wait_value("state", "speaking")
    for n in range(3):
        daemon.say(json.dumps({"id": f"q{n}", "text": f"Waiting {n}"}))
    entities.wait_value("queue_length", "3")
    entities.press("clear")
    for n in range(3):
        dropped = daemon.wait_terminal(f"q{n}")
        assert (dropped["event_type"], dropped["reason"]) == ("dropped", "cleared")
    entities.wait_value("queue_length", "0")
    entities.press("skip")
    skipped = daemon.wait_terminal("long")
    assert (skipped["event_type"], skipped["reason"]) == ("interrupted", "skip")
    daemon.say(json.dumps({"id": "long2", "text": "x" * 100}))
    daemon.wait_for_event("long2", "started")
    entities.press("stop")
    stopped = daemon.wait_terminal("long2")
    assert (stopped["event_type"], stopped["reason"]) == ("interrupted", "stop")
    entities.wait_value("state", "idle")

    # The Quiet mode switch: on, requests below critical are dropped; off, they are spoken again.
    ha.call("switch", "turn_on", entity_id=ids["quiet"])
    wait_until(lambda: daemon.states()[-1]["quiet"] is True, 20, "quiet in the retained state")
    entities.wait_value("quiet", "on")
    daemon.say(json.dumps({"id": "hushed", "text": "Not now"}))
    assert daemon.wait_terminal("hushed")["reason"] == "quiet"
    ha.call("switch", "turn_off", entity_id=ids["quiet"])
    entities.wait_value("quiet", "off")

    # The Problem sensor: on while the speech service fails (the plan's limit: a 429), off after the next
    # success. (A request's own unknown voice is no outage: it leaves the sensor off.)
    daemon.say(json.dumps({"id": "bad", "text": "Over the limit", "voice": "over-quota"}))
    assert daemon.wait_terminal("bad")["code"] == "cartesia_rate_limited"
    entities.wait_value("problem", "on")
    daemon.say(json.dumps({"id": "good", "text": "Fine again"}))
    assert daemon.wait_terminal("good")["event_type"] == "finished"
    entities.wait_value("problem", "off")

    # Home Assistant restarts, and the retained discovery is gone meanwhile (a broker without
    # persistence, say): its birth message alone brings the entities back, the daemon still running.
    ha.stop()
    daemon.observer.publish(f"homeassistant/device/{daemon.site}/config", "", retain=True)
    ha.start()
    wait_until(lambda: "Home Assistant is online" in daemon.log(), 60, "the daemon to hear the birth message")
    wait_until(lambda: entities.available() == every, 60, f"the entities back; so far {entities.available()}")

    # Stopping the daemon makes the device unavailable (its last word, and its will, say offline);
    # started again, it is back.
    assert daemon.stop() == 0
    wait_until(lambda: entities.available() == [], 30, f"the entities unavailable; still {entities.available()}")
    daemon.start(VOICES=json.dumps(VOICES))
    wait_until(lambda: entities.available() == every, 60, f"the entities available again; {entities.available()}")


# ------------------------------------------------------------------------------- the ESPHome device

PLAYER = "media_player.kitchen_speaker_media_player"
SATELLITE = "assist_satellite.kitchen_speaker_assist_satellite"
ONE_DEVICE = {"2025.4.4", "2025.1.4"}  # before 2026.8 Home Assistant puts both integrations on one device


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


def api_settings(port: int, key: str | None = None) -> dict[str, str]:
    settings = {"ESPHOME__PORT": str(port), "ESPHOME__HOST": "127.0.0.1", "ESPHOME__MDNS": "false"}
    return {**settings, "ESPHOME__ENCRYPTION_KEY": key} if key else settings


def value(ha: HomeAssistant, entity: str) -> str | None:
    """An entity's state; None while it does not exist."""
    found = ha.state(entity)
    return None if found is None else str(found["state"])


def attribute(ha: HomeAssistant, entity: str, name: str) -> Any:
    found = ha.state(entity)
    return None if found is None else found["attributes"].get(name)


def available(ha: HomeAssistant, *entities: str) -> bool:
    return all(value(ha, entity) not in (None, "unavailable") for entity in entities)


def requests_from_esphome(daemon: Daemon) -> list[dict[str, Any]]:
    """The requests Home Assistant made through the ESPHome API, as their `queued` events."""
    return [e for e in daemon.events() if e["event_type"] == "queued" and e["id"].startswith("esphome-")]


def next_request(daemon: Daemon, before: int) -> str:
    wait_until(lambda: len(requests_from_esphome(daemon)) > before, 30, "Home Assistant's request")
    return str(requests_from_esphome(daemon)[before]["id"])


def test_home_assistant_adds_the_speaker_over_the_esphome_api_and_uses_it(  # noqa: PLR0915 - one Home Assistant start drives every call
    homeassistant: HomeAssistant,
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    pulse: PulseAudio,
    media: MediaServer,
) -> None:
    ha = homeassistant
    port = free_port()
    daemon = make_daemon(cartesia_env, site=SITE, **api_settings(port))
    wait_until(lambda: port_open(port), 20, "the ESPHome API to listen")

    # Added through the ESPHome integration's config flow (its address), no YAML.
    added = ha.add_esphome(port)
    assert (added["type"], added["title"]) == ("create_entry", "Kitchen speaker"), added
    wait_until(lambda: available(ha, PLAYER, SATELLITE), 60, "the entities")
    player = ha.state(PLAYER)
    assert player is not None and player["state"] == "idle" and player["attributes"]["volume_level"] == 1.0
    features = player["attributes"]["supported_features"]
    for feature in (4, 8, 512, 4096, 1048576):  # volume set, mute, play media, stop, announce
        assert features & feature, (features, feature)
    satellite = ha.state(SATELLITE)
    assert satellite is not None and satellite["attributes"]["supported_features"] & 1  # announce
    device = ha.template(f"{{{{ device_entities(device_id('{PLAYER}')) | sort | join(',') }}}}").split(",")
    assert SATELLITE in device
    assert (DOCUMENTED["speak"] in device) is (ha.version in ONE_DEVICE)  # one device, or one per integration
    assert ha.template(f"{{{{ device_attr(device_id('{PLAYER}'), 'name') }}}}") == "Kitchen speaker"

    # assist_satellite.announce with a message: our engine speaks it (the emulator gets the text), after
    # Home Assistant's pre-announce sound as the chime; the call returns when it has been heard.
    seen = len(requests_from_esphome(daemon))
    with pulse.capture() as capture:
        ha.call("assist_satellite", "announce", entity_id=SATELLITE, message="Dinner is ready")
        request = next_request(daemon, seen)
        assert daemon.wait_terminal(request)["event_type"] == "finished"  # before the call returned
        x = capture.wait_for_sound_then_silence()
    started = daemon.wait_for_event(request, "started")
    assert (started["engine"], started["fallback"]) == ("cartesia", False)
    assert emulator.contexts_for("Dinner is ready")[0].done
    assert "/api/assist_satellite/static/preannounce.mp3" in daemon.log()  # fetched as the chime
    *chime, speech = sound_regions(x, min_gap=0.5)  # the pre-announce sound, then the speech
    assert chime and dominant_frequency(x[speech.start : speech.end]) == pytest.approx(frequency_for("neutral"), abs=5)
    assert abs(dominant_frequency(x[chime[0].start : chime[0].end]) - frequency_for("neutral")) > 50

    # The voice intent "broadcast ...", through Home Assistant's conversation API: announced on the satellite.
    seen = len(requests_from_esphome(daemon))
    ha.request("POST", "/api/conversation/process", {"text": "broadcast the laundry is done", "language": "en"})
    request = next_request(daemon, seen)
    assert daemon.wait_terminal(request)["event_type"] == "finished"
    assert any(c.done for c in emulator.contexts_for("laundry is done"))

    # tts via the demo engine (a legacy one: tts.demo_say; tts.speak needs a TTS entity) to the media player:
    # Home Assistant hands over its TTS proxy URL, played as an announcement.
    seen = len(requests_from_esphome(daemon))
    with pulse.capture() as capture:
        ha.call("tts", "demo_say", entity_id=PLAYER, message="Hello from the demo")
        request = next_request(daemon, seen)
        finished = daemon.wait_terminal(request)
        x = capture.wait_for_sound_then_silence()
    assert (finished["event_type"], finished["engine"]) == ("finished", "media")
    assert finished["duration_ms"] == pytest.approx(2064, abs=150)  # the demo's bundled mp3
    assert requests_from_esphome(daemon)[seen]["priority"] == "high"
    assert "/api/tts_proxy/" in daemon.log()
    (heard,) = sound_regions(x, min_gap=0.5)
    assert heard.end - heard.start > 1.5 * RATE

    # media_player.play_media with announce: true.
    seen = len(requests_from_esphome(daemon))
    with pulse.capture() as capture:
        ha.call(
            "media_player",
            "play_media",
            entity_id=PLAYER,
            media_content_id=media.url("tone.ogg"),
            media_content_type="music",
            announce=True,
        )
        request = next_request(daemon, seen)
        assert daemon.wait_terminal(request)["event_type"] == "finished"
        x = capture.wait_for_sound_then_silence()
    (tone,) = sound_regions(x)
    assert dominant_frequency(x[tone.start : tone.end]) == pytest.approx(TONES["tone.ogg"][0], abs=5)
    assert requests_from_esphome(daemon)[seen]["priority"] == "high"

    # Ordinary media (an endless stream): the player shows playing while it plays, at normal priority;
    # media_player.media_stop stops it (event interrupted, reason stop) and the player is idle again.
    seen = len(requests_from_esphome(daemon))
    ha.call(
        "media_player",
        "play_media",
        entity_id=PLAYER,
        media_content_id=media.url("endless.mp3"),
        media_content_type="music",
    )
    request = next_request(daemon, seen)
    assert requests_from_esphome(daemon)[seen]["priority"] == "normal"
    wait_until(lambda: value(ha, PLAYER) == "playing", 30, "the player playing")
    ha.call("media_player", "media_stop", entity_id=PLAYER)
    stopped = daemon.wait_terminal(request)
    assert (stopped["event_type"], stopped["reason"]) == ("interrupted", "stop")
    wait_until(lambda: value(ha, PLAYER) == "idle", 30, "the player idle again")

    # Volume and mute: one setting, whichever surface sets it; each shows the other's change.
    ha.call("media_player", "volume_set", entity_id=PLAYER, volume_level=0.3)
    wait_until(lambda: daemon.states()[-1]["volume"] == 30, 20, "the volume on the MQTT state")
    wait_until(lambda: float(value(ha, DOCUMENTED["volume"]) or "nan") == 30, 20, "the Volume number")
    daemon.observer.publish(daemon.topic("set/volume"), "70")
    wait_until(lambda: attribute(ha, PLAYER, "volume_level") == 0.7, 20, "the player's volume")
    ha.call("media_player", "volume_mute", entity_id=PLAYER, is_volume_muted=True)
    wait_until(lambda: daemon.states()[-1]["muted"] is True, 20, "muted on the MQTT state")
    wait_until(lambda: value(ha, DOCUMENTED["mute"]) == "on", 20, "the Mute switch")
    ha.call("switch", "turn_off", entity_id=DOCUMENTED["mute"])
    wait_until(lambda: attribute(ha, PLAYER, "is_volume_muted") is False, 20, "the player unmuted")

    # Home Assistant restarts: it reconnects, the entities come back.
    ha.stop()
    ha.start()
    wait_until(lambda: available(ha, PLAYER, SATELLITE), 90, "the entities back")
    # The daemon restarts: unavailable while it is away, back when it is, with the same identity.
    assert daemon.stop() == 0
    wait_until(lambda: value(ha, PLAYER) == "unavailable", 60, "the player unavailable")
    daemon.start(**api_settings(port))
    wait_until(lambda: available(ha, PLAYER, SATELLITE), 90, "the entities back again")
    assert "Unexpected device" not in ha.log()


def test_home_assistant_adds_the_encrypted_api_with_its_key_and_refuses_a_wrong_one(
    homeassistant: HomeAssistant, make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    ha = homeassistant
    key = base64.b64encode(b"home-assistant-test-key-32-bytes").decode()
    port = free_port()
    daemon = make_daemon(cartesia_env, site=SITE, **api_settings(port, key))
    wait_until(lambda: port_open(port), 20, "the ESPHome API to listen")
    flow = ha.request("POST", "/api/config/config_entries/flow", {"handler": "esphome"})
    step = f"/api/config/config_entries/flow/{flow['flow_id']}"
    asked = ha.request("POST", step, {"host": "127.0.0.1", "port": port})
    assert (asked["type"], asked["step_id"]) == ("form", "encryption_key"), asked  # it knows a key is needed
    wrong = ha.request("POST", step, {"noise_psk": base64.b64encode(b"w" * 32).decode()})
    assert (wrong["step_id"], wrong["errors"]) == ("encryption_key", {"base": "invalid_psk"}), wrong
    right = ha.request("POST", step, {"noise_psk": key})
    assert right["type"] == "create_entry", right
    wait_until(lambda: value(ha, PLAYER) == "idle", 60, "the player")
    ha.call("media_player", "volume_set", entity_id=PLAYER, volume_level=0.45)
    wait_until(lambda: daemon.states()[-1]["volume"] == 45, 20, "the volume, over the encrypted connection")
    assert key not in daemon.log()


@pytest.fixture(params=["oldest", pytest.param("newest", marks=pytest.mark.platform)])
def on_a_network_of_its_own(request: pytest.FixtureRequest) -> Iterator[tuple[HomeAssistant, str]]:
    """Home Assistant with its zeroconf discovery, and the broker, the emulator and the daemons of the test,
    on a network namespace of their own (tests/netns.py), where mDNS works as on a home network and
    reaches nothing else; the network's address. (Home Assistant's zeroconf never uses loopback.)"""
    unavailable = netns.available()
    if unavailable is not None:
        pytest.skip(unavailable)
    installed = install(oldest() if request.param == "oldest" else NEWEST)  # outside: it may download
    with sigterm_runs_cleanup(), netns.private_network() as address:
        broker: Broker = request.getfixturevalue("broker")  # made in there, as what the test asks for next
        for inside in ("emulator", "make_daemon"):
            request.getfixturevalue(inside)
        ha = HomeAssistant(installed, free_port(), broker.port, zeroconf=True)
        try:
            ha.start()
            ha.onboard()
            yield ha, address
        finally:
            ha.remove()


def test_home_assistant_discovers_the_speaker_over_mdns_and_adds_it(
    on_a_network_of_its_own: tuple[HomeAssistant, str],
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
) -> None:
    ha, address = on_a_network_of_its_own
    # As a user has it: port 6053, every address, advertised over mDNS.
    daemon = make_daemon(cartesia_env, site=SITE, ESPHOME__PORT="6053")
    wait_until(lambda: f"advertised over mDNS as kitchen-speaker on {address}" in daemon.log(), 30, "advertised")

    def discovered() -> dict[str, Any] | None:
        flows = ha.command({"type": "config_entries/flow/progress"})  # what Settings → Devices shows as discovered
        return next((flow for flow in flows if flow["handler"] == "esphome"), None)

    wait_until(lambda: discovered() is not None, 90, "Home Assistant to discover the speaker")
    flow = discovered()
    assert flow is not None and (flow["context"]["source"], flow["step_id"]) == ("zeroconf", "discovery_confirm")
    # The friendly_name record (2026 releases add the node name: "Kitchen speaker (kitchen-speaker)").
    assert flow["context"]["title_placeholders"]["name"].startswith("Kitchen speaker")
    added = ha.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {})  # Configure → Submit
    assert (added["type"], added["title"]) == ("create_entry", "Kitchen speaker"), added
    wait_until(lambda: available(ha, PLAYER, SATELLITE), 60, "the entities")
    ha.call("media_player", "volume_set", entity_id=PLAYER, volume_level=0.25)
    wait_until(lambda: daemon.states()[-1]["volume"] == 25, 20, "the volume, over the discovered address")
    assert f"connected from {address}" in daemon.log()  # Home Assistant came to the advertised address


# ------------------------------------------------------------------------ the documented examples

DOCS = Path(__file__).resolve().parent.parent / "docs" / "home-assistant.md"


def documented_examples() -> list[dict[str, Any]]:
    """Every YAML example in docs/home-assistant.md: an action, or an automation (it has triggers)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    examples = [yaml.safe_load(block) for block in blocks]
    assert examples and all(isinstance(e, dict) and ("action" in e or "triggers" in e) for e in examples)
    return examples


def stand_in(example: dict[str, Any]) -> dict[str, Any]:
    """tts.speak needs a TTS entity, which the test Home Assistant has not: the demo engine's legacy
    service goes the same way (play_media with announce, to the same media player)."""
    if example.get("action") != "tts.speak":
        return example
    data = example["data"]
    return {"action": "tts.demo_say", "data": {"entity_id": data["media_player_entity_id"], "message": data["message"]}}


def test_the_documented_examples_run_as_written(
    homeassistant: HomeAssistant,
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    media: MediaServer,
) -> None:
    ha = homeassistant
    port = free_port()
    daemon = make_daemon(cartesia_env, site=SITE, **api_settings(port))
    wait_until(lambda: port_open(port), 20, "the ESPHome API to listen")
    assert ha.add_esphome(port)["type"] == "create_entry"
    wait_until(lambda: available(ha, PLAYER, SATELLITE, *DOCUMENTED.values()), 60, "every entity")
    shutil.copy(media.dir / "tone.mp3", ha.dir / "www" / "doorbell.mp3")  # the documented /local/doorbell.mp3

    def idle() -> bool:
        state = daemon.states()[-1]
        return bool(state["state"] == "idle" and state["queue_length"] == 0)

    for index, example in enumerate(documented_examples()):
        wait_until(idle, 60, f"the speaker idle before example {index}")  # each one alone: none cuts another
        events, state = len(daemon.events()), daemon.states()[-1]

        def reached() -> bool:
            return len(daemon.events()) > events or daemon.states()[-1] != state  # noqa: B023 - used at once

        name = f"documented_{index}"
        if "triggers" not in example:
            ha.run_script(name, [stand_in(example)])
            wait_until(reached, 30, f"example {index} ({example['action']}) to reach the speaker")
            continue
        automation = ha.add_automation(name, example)
        (trigger,) = example["triggers"]
        if trigger.get("entity_id") == DOCUMENTED["speech"]:  # its trigger is ours: made to happen for real
            daemon.say(json.dumps({"id": f"doc-{index}", "text": "No such voice", "voice": "invalid-voice"}))
            wait_until(lambda: attribute(ha, automation, "last_triggered"), 30, f"{automation} to trigger")  # noqa: B023 - used at once
        else:  # a door bell, a time of day: its actions, run
            ha.call("automation", "trigger", entity_id=automation)
            wait_until(reached, 30, f"example {index} ({automation}) to reach the speaker")
    # What the examples did, as the speaker saw it.
    assert daemon.states()[-1]["quiet"] is True  # quiet at night
    assert float(value(ha, DOCUMENTED["volume"]) or "nan") == 40  # the media player's volume, on the MQTT number
    for text in ("The washing machine is done.", "Dinner is ready.", "Someone is at the front door."):
        assert any(c.done for c in emulator.contexts_for(text)), text
    played = [e for e in daemon.events() if e["event_type"] == "finished" and e["engine"] == "media"]
    assert len(played) == 2  # the TTS and the doorbell sound
