"""Home Assistant MQTT discovery: the speaker appears as one device with its entities, no YAML.

Device-based discovery (one retained message on <prefix>/device/<site>/config, Home Assistant 2024.11+),
or one topic per entity for older versions. Sent on every connect and again, after a short random
delay, when Home Assistant announces itself (<prefix>/status = online).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mqtt_speaker import __version__
from mqtt_speaker.protocol.esphome.identity import device_mac
from mqtt_speaker.protocol.topics import Command, Topics
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.emotions import EMOTIONS
from mqtt_speaker.speech.vocabulary import EventType, SpeakerState

PROJECT_URL = "https://github.com/mqtt-speaker/mqtt-speaker"
MANUFACTURER = "mqtt-speaker"  # the same on the ESPHome device: the one device shows one maker and model
MODEL = "MQTT speaker (Cartesia / espeak-ng)"


class Device(BaseModel):
    identifiers: list[str]
    name: str
    manufacturer: str = MANUFACTURER
    model: str = MODEL
    sw_version: str = __version__
    connections: list[tuple[str, str]] = Field(
        default_factory=list, description="The ESPHome device's MAC: Home Assistant merges the two into one device"
    )


class Origin(BaseModel):
    name: str = "mqtt-speaker"
    sw_version: str = __version__
    support_url: str = PROJECT_URL


class DeviceDiscovery(BaseModel):
    """The device-based discovery payload (the long key names; Home Assistant accepts both)."""

    device: Device
    origin: Origin = Field(default_factory=Origin)
    availability_topic: str
    qos: int = 1
    components: dict[str, dict[str, Any]]


class PerEntityDiscovery(BaseModel, extra="allow"):
    """One entity's discovery payload (the shared device, origin and availability, then its own keys)."""

    device: Device
    origin: Origin
    availability_topic: str
    qos: int


def components(settings: Settings, topics: Topics) -> dict[str, dict[str, Any]]:
    """Every entity, keyed by its object id, with its platform under "platform"."""
    site = settings.site
    state = topics.state

    def entity(platform: str, name: str, key: str, **config: Any) -> tuple[str, dict[str, Any]]:
        return key, {
            "platform": platform,
            "name": name,
            "unique_id": f"mqtt-speaker-{site}-{key}",
            # The entity id, <platform>.<site>_<key>, on every release: default_entity_id since 2025.10,
            # object_id before it (which newer releases ignore, and 2025.10 on does not warn about beside it).
            "default_entity_id": f"{platform}.{site}_{key}",
            "object_id": f"{site}_{key}",
            **config,
        }

    def read(template: str) -> dict[str, Any]:
        return {"state_topic": state, "value_template": template}

    # What the notify and text entities send is spoken as text, whatever it starts with ("[Alarm] ...", '"Hi"'):
    # a say request object holding it, never the bare text (which a leading '{', '[' or '"' would make JSON).
    say_text = {"command_topic": topics.command(Command.SAY), "command_template": '{{ {"text": value} | to_json }}'}

    return dict(
        [
            entity("notify", "Speak", "speak", icon="mdi:account-voice", **say_text),
            entity("text", "Say", "say", max=255, icon="mdi:message-text", **say_text),
            entity(
                "select",
                "Emotion",
                "emotion",
                command_topic=topics.command(Command.SET_EMOTION),
                options=list(EMOTIONS),
                entity_category="config",
                icon="mdi:emoticon-outline",
                **read("{{ value_json.emotion }}"),
            ),
            entity(
                "select",
                "Voice",
                "voice",
                command_topic=topics.command(Command.SET_VOICE),
                options=list(settings.voice_aliases),
                entity_category="config",
                icon="mdi:account-tie-voice",
                **read("{{ value_json.voice }}"),
            ),
            entity(
                "number",
                "Volume",
                "volume",
                command_topic=topics.command(Command.SET_VOLUME),
                min=0,
                max=100,
                step=1,
                mode="slider",
                unit_of_measurement="%",
                entity_category="config",
                icon="mdi:volume-high",
                **read("{{ value_json.volume }}"),
            ),
            entity(
                "switch",
                "Mute",
                "mute",
                command_topic=topics.command(Command.SET_MUTE),
                payload_on="ON",
                payload_off="OFF",
                entity_category="config",
                icon="mdi:volume-mute",
                **read("{{ 'ON' if value_json.muted else 'OFF' }}"),
            ),
            entity(
                "number",
                "Music ducking",
                "duck_db",
                command_topic=topics.command(Command.SET_DUCK_DB),
                min=0,
                max=40,
                step=1,
                mode="slider",
                unit_of_measurement="dB",
                entity_category="config",
                icon="mdi:music-note-minus",
                **read("{{ value_json.duck_db }}"),
            ),
            entity(
                "switch",
                "Quiet mode",
                "quiet",
                command_topic=topics.command(Command.SET_QUIET),
                payload_on="ON",
                payload_off="OFF",
                entity_category="config",
                icon="mdi:volume-off",
                **read("{{ 'ON' if value_json.quiet else 'OFF' }}"),
            ),
            entity("button", "Stop", "stop", command_topic=topics.command(Command.STOP), icon="mdi:stop"),
            entity("button", "Skip", "skip", command_topic=topics.command(Command.SKIP), icon="mdi:skip-next"),
            entity(
                "button",
                "Clear queue",
                "clear",
                command_topic=topics.command(Command.CLEAR),
                icon="mdi:playlist-remove",
            ),
            entity(
                "sensor",
                "State",
                "state",
                device_class="enum",
                options=[s.value for s in SpeakerState],
                **read("{{ value_json.state }}"),
            ),
            entity(
                "sensor",
                "Queue length",
                "queue_length",
                state_class="measurement",
                icon="mdi:playlist-play",
                **read("{{ value_json.queue_length }}"),
            ),
            entity(
                "binary_sensor",
                "Problem",
                "problem",
                device_class="problem",
                entity_category="diagnostic",
                **read("{{ 'ON' if value_json.problem else 'OFF' }}"),
            ),
            entity(
                "sensor",
                "Engine",
                "engine",
                entity_category="diagnostic",
                icon="mdi:text-to-speech",
                **read("{{ value_json.engine }}"),
            ),
            entity(
                "event",
                "Speech",
                "speech",
                state_topic=topics.event,
                event_types=[e.value for e in EventType],
                icon="mdi:bullhorn",
            ),
        ]
    )


def device(settings: Settings) -> Device:
    """The MQTT device; with the ESPHome API on, it names the ESPHome device's MAC as its connection, so that
    Home Assistant shows the two integrations' entities on one device."""
    connections = [("mac", device_mac(settings.site))] if settings.esphome.port else []
    return Device(identifiers=[f"mqtt-speaker-{settings.site}"], name=settings.device_name, connections=connections)


def discovery_messages(settings: Settings, topics: Topics) -> list[tuple[str, str]]:
    """(topic, retained payload) pairs that make the device appear; empty payloads when discovery is off."""
    entities = components(settings, topics)
    enabled = settings.homeassistant.discovery
    if not settings.homeassistant.per_entity:
        whole = DeviceDiscovery(device=device(settings), availability_topic=topics.availability, components=entities)
        return [(topics.discovery, whole.model_dump_json() if enabled else "")]
    messages = []
    for key, config in entities.items():
        one = PerEntityDiscovery.model_validate(
            {
                "device": device(settings),
                "origin": Origin(),
                "availability_topic": topics.availability,
                "qos": 1,
                **{k: v for k, v in config.items() if k != "platform"},
            }
        )
        messages.append((topics.entity_discovery(config["platform"], key), one.model_dump_json() if enabled else ""))
    return messages


def removal_messages(topics: Topics, settings: Settings) -> list[tuple[str, str]]:
    """Empty retained payloads for both discovery forms: the device disappears from Home Assistant."""
    entities = components(settings, topics)
    return [(topics.discovery, "")] + [
        (topics.entity_discovery(config["platform"], key), "") for key, config in entities.items()
    ]
