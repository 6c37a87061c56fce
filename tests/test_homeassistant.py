"""Discovery against a real Home Assistant Core: the speaker appears as one device, every entity works.

Runs against the oldest release the README supports (on the host, a pyenv Python) and the newest
(Python 3.14, inside a cached Debian sid root; marked `platform`). Starts mosquitto, Home Assistant, the
daemon with the Cartesia emulator, and the PulseAudio capture; checks everything through Home
Assistant's REST API, with the entity ids docs/home-assistant.md documents for each release. Skipped,
saying why, only when no Python that can run the oldest release is on the machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import Broker, Daemon, free_port
from tests.homeassistant.harness import NEWEST, HomeAssistant, Release, find_release, install
from tests.platform.roots import sigterm_runs_cleanup
from tests.sound import PulseAudio, sound_regions, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.homeassistant]

SITE = "kitchen"  # the device is then "Kitchen speaker", as in docs/home-assistant.md
# role: (platform, id from the entity's name (before 2025.10), id from default_entity_id (since))
ROLES = {
    "speak": ("notify", "speak", "speak"),
    "say": ("text", "say", "say"),
    "emotion": ("select", "emotion", "emotion"),
    "voice": ("select", "voice", "voice"),
    "volume": ("number", "volume", "volume"),
    "duck_db": ("number", "music_ducking", "duck_db"),
    "quiet": ("switch", "quiet_mode", "quiet"),
    "stop": ("button", "stop", "stop"),
    "skip": ("button", "skip", "skip"),
    "clear": ("button", "clear_queue", "clear"),
    "state": ("sensor", "state", "state"),
    "queue_length": ("sensor", "queue_length", "queue_length"),
    "engine": ("sensor", "engine", "engine"),
    "problem": ("binary_sensor", "problem", "problem"),
    "speech": ("event", "speech", "speech"),
}
# What a user sees on each release (docs/home-assistant.md lists both).
DOCUMENTED = {
    "2025.4.4": {role: f"{p}.kitchen_speaker_{by_name}" for role, (p, by_name, _) in ROLES.items()},
    "2025.1.4": {role: f"{p}.kitchen_speaker_{by_name}" for role, (p, by_name, _) in ROLES.items()},
    "2026.11.0": {role: f"{p}.kitchen_{key}" for role, (p, _, key) in ROLES.items()},
}
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
        self.ids = DOCUMENTED[ha.version]

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
