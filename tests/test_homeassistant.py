"""Discovery against a real Home Assistant Core: the speaker appears as one device, its entities work.

Starts mosquitto, Home Assistant (its own Python and cached virtualenv), the daemon with the Cartesia
emulator, and the PulseAudio capture; checks everything through Home Assistant's REST API. Skipped,
saying why, only when no Python that can run Home Assistant is on the machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import Broker, Daemon, free_port
from tests.homeassistant.harness import HomeAssistant, ensure_venv, find_release
from tests.sound import PulseAudio, sound_regions, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.homeassistant]

NAME = "Test Speaker"
PREFIX = "test_speaker"
ENTITIES = {
    "notify": ["speak"],
    "text": ["say"],
    "select": ["emotion", "voice"],
    "number": ["volume", "music_ducking"],
    "switch": ["quiet_mode"],
    "button": ["stop", "skip", "clear_queue"],
    "sensor": ["state", "queue_length", "engine"],
    "binary_sensor": ["problem"],
    "event": ["speech"],
}
ENTITY_IDS = sorted(f"{platform}.{PREFIX}_{key}" for platform, keys in ENTITIES.items() for key in keys)


@pytest.fixture
def homeassistant(broker: Broker) -> Iterator[HomeAssistant]:
    found = find_release()
    if found is None:
        pytest.skip("no Python 3.13.0 or 3.12.1 under pyenv: Home Assistant cannot be installed on this machine")
    venv = ensure_venv(*found)
    ha = HomeAssistant(venv, free_port(), broker.port)
    ha.start()
    ha.onboard()
    yield ha
    ha.remove()


def available(ha: HomeAssistant) -> list[str]:
    states = {s["entity_id"]: s["state"] for s in ha.request("GET", "/api/states")}
    return sorted(e for e in ENTITY_IDS if states.get(e) not in (None, "unavailable"))


def state(ha: HomeAssistant, entity_id: str) -> dict[str, Any]:
    found = ha.state(entity_id)
    assert found is not None, f"{entity_id} does not exist"
    return found


def test_home_assistant_sees_the_speaker_and_drives_it(
    homeassistant: HomeAssistant,
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    pulse: PulseAudio,
    broker: Broker,
) -> None:
    ha = homeassistant
    voices = {"Narrator": "6ccbfb76-1fc6-48f7-b71d-91ac6298247b", "Butler": "butler-voice-id"}
    daemon = make_daemon(cartesia_env, HOMEASSISTANT__NAME=NAME, VOICES=json.dumps(voices))

    # Every entity exists under one device and is available, with the daemon's values.
    wait_until(lambda: available(ha) == ENTITY_IDS, 60, f"the entities; so far {available(ha)}", interval=0.5)
    grouped = ha.template(f"{{{{ device_entities(device_id('notify.{PREFIX}_speak')) | sort | join(',') }}}}")
    assert grouped.split(",") == ENTITY_IDS
    assert ha.template(f"{{{{ device_attr(device_id('notify.{PREFIX}_speak'), 'name') }}}}") == NAME
    assert float(state(ha, f"number.{PREFIX}_volume")["state"]) == 100
    assert state(ha, f"select.{PREFIX}_emotion")["state"] == "neutral"
    assert state(ha, f"select.{PREFIX}_voice")["attributes"]["options"] == ["Narrator", "Butler"]
    assert state(ha, f"select.{PREFIX}_voice")["state"] == "Narrator"
    assert state(ha, f"switch.{PREFIX}_quiet_mode")["state"] == "off"
    assert state(ha, f"sensor.{PREFIX}_state")["state"] == "idle"
    assert state(ha, f"sensor.{PREFIX}_engine")["state"] == "cartesia"
    assert state(ha, f"binary_sensor.{PREFIX}_problem")["state"] == "off"

    # notify.send_message makes it speak; the Speech event entity shows `finished`.
    with pulse.capture() as capture:
        ha.call("notify", "send_message", entity_id=f"notify.{PREFIX}_speak", message="Dinner is ready")
        wait_until(
            lambda: state(ha, f"event.{PREFIX}_speech")["attributes"].get("event_type") == "finished",
            30,
            "the Speech event to show finished",
        )
        assert sound_regions(capture.wait_for_sound_then_silence())
    assert emulator.contexts_for("Dinner is ready")[0].done

    # The Emotion select changes the emotion of the next utterance.
    ha.call("select", "select_option", entity_id=f"select.{PREFIX}_emotion", option="sad")
    wait_until(lambda: state(ha, f"select.{PREFIX}_emotion")["state"] == "sad", 20, "the emotion read back")
    ha.call("text", "set_value", entity_id=f"text.{PREFIX}_say", value="Feeling blue")
    wait_until(lambda: any(c.done for c in emulator.contexts_for("Feeling blue")), 30, "the text spoken")
    assert emulator.contexts_for("Feeling blue")[0].emotion == "sad"

    # The Volume number changes the retained state (and reads it back).
    ha.call("number", "set_value", entity_id=f"number.{PREFIX}_volume", value=35)
    wait_until(lambda: daemon.states()[-1]["volume"] == 35, 20, "the volume in the retained state")
    wait_until(lambda: float(state(ha, f"number.{PREFIX}_volume")["state"]) == 35, 20, "the volume read back")
    # So does the Music ducking number (the depth, in dB).
    assert float(state(ha, f"number.{PREFIX}_music_ducking")["state"]) == 12
    ha.call("number", "set_value", entity_id=f"number.{PREFIX}_music_ducking", value=20)
    wait_until(lambda: daemon.states()[-1]["duck_db"] == 20, 20, "the ducking depth in the retained state")

    # The Stop button interrupts a long utterance.
    daemon.say(json.dumps({"id": "long", "text": "x" * 100}))
    daemon.wait_for_event("long", "started")
    ha.call("button", "press", entity_id=f"button.{PREFIX}_stop")
    interrupted = daemon.wait_terminal("long")
    assert (interrupted["event_type"], interrupted["reason"]) == ("interrupted", "stop")

    # Home Assistant restarts, and the retained discovery is gone meanwhile (a broker without
    # persistence, say): its birth message alone brings the entities back, the daemon still running.
    ha.stop()
    daemon.observer.publish(f"homeassistant/device/{daemon.site}/config", "", retain=True)
    ha.start()
    wait_until(lambda: "Home Assistant is online" in daemon.log(), 60, "the daemon to hear the birth message")
    wait_until(lambda: available(ha) == ENTITY_IDS, 60, f"the entities back; so far {available(ha)}", interval=0.5)

    # Stopping the daemon makes them unavailable (its last word, and its will, say offline).
    assert daemon.stop() == 0
    wait_until(lambda: available(ha) == [], 30, f"the entities unavailable; still {available(ha)}", interval=0.5)
