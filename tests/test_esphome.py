"""The ESPHome API's parts alone: the framing (plaintext, and Noise against the Noise library as the
client's side), the device's identity, its settings and secrets, the MQTT device it shares with Home
Assistant, and the mDNS advertisement (a real one on the loopback interface, browsed with python-zeroconf);
the adapter on a speaker of fakes: what Home Assistant's calls become. The real clients against the real
daemon: test_esphome_e2e.py; against Home Assistant: test_homeassistant.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from noise.connection import NoiseConnection
from zeroconf.asyncio import AsyncServiceInfo

from mqtt_speaker.daemon import Daemon
from mqtt_speaker.protocol.discovery import discovery_messages
from mqtt_speaker.protocol.esphome.adapter import EsphomeAdapter
from mqtt_speaker.protocol.esphome.frames import MAC_FAILURE, FrameError, PlaintextFramer
from mqtt_speaker.protocol.esphome.identity import Identity, device_mac
from mqtt_speaker.protocol.esphome.mdns import Advertisement
from mqtt_speaker.protocol.esphome.noise import NoiseFramer
from mqtt_speaker.protocol.topics import Topics
from mqtt_speaker.settings import ConfigError, Settings, load_settings
from mqtt_speaker.speech.vocabulary import ErrorCode, FinishedEvent, Priority, SayRequest
from tests import mdns
from tests.conftest import free_port
from tests.fakes import FakeEngine, FakeOutput, Harness, run

if TYPE_CHECKING:
    from mqtt_speaker.protocol.esphome.connection import Connection

KEY = base64.b64encode(bytes(range(32))).decode()


# ----------------------------------------------------------------------------------------- framing


def test_plaintext_frames_are_read_whole_however_the_bytes_arrive() -> None:
    sender, receiver = PlaintextFramer(), PlaintextFramer()
    wire = sender.frame(1, b"\x0a\x01x") + sender.frame(300, b"y" * 200) + sender.frame(7, b"")
    got: list[tuple[int, bytes]] = []
    for byte in wire:  # one byte at a time
        got += receiver.receive(bytes([byte]))
    assert got == [(1, b"\x0a\x01x"), (300, b"y" * 200), (7, b"")]
    assert receiver.receive(wire) == got  # and all at once


@pytest.mark.parametrize(
    ("data", "reason", "reply"),
    [
        (b"\x01\x00\x00", "encrypts", b"\x00Bad indicator byte"),  # a Noise client: told as the firmware tells it
        (b"GET /", "bad indicator byte 0x47", b""),
        (b"\x00\xff\xff\xff\xff\x01", "varint longer than 4 bytes", b""),
        (b"\x00\x80\x80\x04\x01", "a message of 65536 bytes", b""),  # refused before any of it is buffered
    ],
)
def test_a_plaintext_frame_that_breaks_the_protocol_is_refused(data: bytes, reason: str, reply: bytes) -> None:
    with pytest.raises(FrameError) as raised:
        PlaintextFramer().receive(data)
    assert reason in str(raised.value) and raised.value.reply == reply


def noise_frame(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(2, "big") + body


def frames(data: bytes) -> list[bytes]:
    bodies = []
    while data:
        size = int.from_bytes(data[1:3], "big")
        bodies.append(data[3 : 3 + size])
        data = data[3 + size :]
    return bodies


def client_side(key: str) -> Any:
    """The client's side of the handshake, as aioesphomeapi makes it (the same Noise library)."""
    client = NoiseConnection.from_name(b"Noise_NNpsk0_25519_ChaChaPoly_SHA256")
    client.set_as_initiator()
    client.set_psks(base64.b64decode(key))
    client.set_prologue(b"NoiseAPIInit\x00\x00")
    client.start_handshake()
    return client


def test_noise_hello_handshake_and_encrypted_messages_both_ways() -> None:
    device = NoiseFramer(base64.b64decode(KEY), "kitchen-speaker", "aabbccddeeff")
    client = client_side(KEY)
    assert not device.ready
    assert device.receive(noise_frame(b"") + noise_frame(b"\x00" + bytes(client.write_message()))) == []
    hello, handshake = frames(device.outgoing())
    assert hello == b"\x01kitchen-speaker\x00aabbccddeeff\x00"
    assert handshake[0] == 0
    client.read_message(handshake[1:])
    assert device.ready and client.handshake_finished
    sealed = client.encrypt((65).to_bytes(2, "big") + (3).to_bytes(2, "big") + b"abc")
    assert device.receive(noise_frame(sealed)) == [(65, b"abc")]
    (answer,) = frames(device.frame(64, b"xyz"))
    assert client.decrypt(answer) == (64).to_bytes(2, "big") + (3).to_bytes(2, "big") + b"xyz"


def test_noise_with_a_wrong_key_is_told_so_after_the_devices_hello() -> None:
    device = NoiseFramer(base64.b64decode(KEY), "kitchen-speaker", "aabbccddeeff")
    client = client_side(base64.b64encode(b"w" * 32).decode())
    with pytest.raises(FrameError) as raised:
        device.receive(noise_frame(b"") + noise_frame(b"\x00" + bytes(client.write_message())))
    hello, reject = frames(device.outgoing() + raised.value.reply)
    assert hello.startswith(b"\x01kitchen-speaker\x00")  # who it is, before the key is checked
    assert reject == b"\x01" + MAC_FAILURE  # the words the clients read as "invalid encryption key"


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"\x00\x03\x01\x0a\x01x", noise_frame(b"\x01Bad indicator byte")),  # a plaintext client
        (noise_frame(b"") + noise_frame(b"\x00" + b"z" * 200), noise_frame(b"\x01Bad handshake packet len")),
        (noise_frame(b"") + noise_frame(b"\x00" + b"z" * 5), noise_frame(b"\x01Handshake error")),  # too short
    ],
)
def test_a_noise_client_that_breaks_the_protocol_is_refused(data: bytes, reply: bytes) -> None:
    device = NoiseFramer(base64.b64decode(KEY), "kitchen-speaker", "aabbccddeeff")
    with pytest.raises(FrameError) as raised:
        device.receive(data)
    assert raised.value.reply == reply


# -------------------------------------------------------------------------------------- identity


def test_the_mac_is_stable_locally_administered_and_differs_by_site_and_machine(tmp_path: Path) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    mac = device_mac("kitchen", machine)
    assert mac == device_mac("kitchen", machine)  # every start, no state needed
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert len(mac) == 17 and mac == mac.lower()
    assert device_mac("hall", machine) != mac
    machine.write_text("fedcba9876543210fedcba9876543210\n")
    assert device_mac("kitchen", machine) != mac
    identity = Identity("kitchen-speaker", "Kitchen speaker", mac)
    assert identity.mac_hex == mac.replace(":", "") and identity.mac_pretty == mac.upper()


def test_the_esphome_settings_the_key_and_its_secrecy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(site="kitchen")
    assert (s.esphome.port, s.esphome.encryption_key, s.esphome_name) == (6053, None, "kitchen-speaker")
    assert Settings(site="a_very_long_site_name_for_a_speaker").esphome_name == "a-very-long-site-name-f-speaker"
    monkeypatch.setenv("MQTT_SPEAKER_ESPHOME__ENCRYPTION_KEY", "not base64 of 32 bytes!")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "esphome.encryption_key" in str(raised.value) and "not base64" not in str(raised.value)
    monkeypatch.setenv("MQTT_SPEAKER_ESPHOME__ENCRYPTION_KEY", KEY)
    assert KEY in load_settings().secrets()  # redacted from every log line
    monkeypatch.delenv("MQTT_SPEAKER_ESPHOME__ENCRYPTION_KEY")
    (tmp_path / "esphome_encryption_key").write_text(KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    loaded = load_settings()
    assert loaded.esphome.encryption_key is not None and loaded.esphome.encryption_key.get_secret_value() == KEY


def test_with_the_api_on_the_mqtt_device_names_the_esphome_mac_so_home_assistant_shows_one_device() -> None:
    def device_of(**values: Any) -> dict[str, Any]:
        s = Settings(site="kitchen", **values)
        [(_, payload)] = discovery_messages(s, Topics(s.base_topic, s.site))
        found: dict[str, Any] = json.loads(payload)["device"]
        return found

    assert device_of()["connections"] == [["mac", device_mac("kitchen")]]
    assert device_of(esphome={"port": 0})["connections"] == []


# ------------------------------------------------------------------------------------------- mDNS


@pytest.mark.parametrize("encrypted", [False, True])
def test_the_advertisement_carries_what_home_assistant_reads(encrypted: bool) -> None:
    identity = Identity("mdns-test-speaker", "Mdns test speaker", device_mac(f"mdns-{encrypted}"))
    port = free_port()

    async def advertised() -> AsyncServiceInfo:
        advertisement = Advertisement(identity, "127.0.0.1", encrypted)
        advertisement.start(port)
        try:
            return await mdns.find(identity.name)
        finally:
            await advertisement.stop()

    info = asyncio.run(advertised())
    assert info.port == port and info.parsed_addresses() == ["127.0.0.1"]
    assert info.server == "mdns-test-speaker.local."
    txt = mdns.records(info)
    assert txt["mac"] == identity.mac_hex and txt["friendly_name"] == "Mdns test speaker"
    assert ("api_encryption" in txt) is encrypted
    if encrypted:
        assert txt["api_encryption"] == "Noise_NNpsk0_25519_ChaChaPoly_SHA256"


# ---------------------------------------------------------------------------------------- the adapter


class Waiting:
    """A connection that waits for an announcement's end."""

    def __init__(self) -> None:
        self.finished: list[bool] = []

    def announce_finished(self, success: bool) -> None:
        self.finished.append(success)


def adapter_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **esphome: Any
) -> tuple[EsphomeAdapter, Harness, list[SayRequest]]:
    """The adapter on a speaker of fakes (not running): what it submits, and what the speaker reports."""
    harness = Harness(tmp_path)
    submitted: list[SayRequest] = []
    monkeypatch.setattr(harness.speaker, "submit", submitted.append)
    settings = Settings(site="kitchen", state_file=tmp_path / "state.json", esphome={"mdns": False, **esphome})
    return EsphomeAdapter(settings, harness.speaker, harness.listener.on_error), harness, submitted


def test_play_media_an_announcement_ducks_at_the_announce_priority_and_ordinary_media_gives_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter, harness, submitted = adapter_on(tmp_path, monkeypatch, announce_priority="critical")
    adapter.play("https://ha.local:8123/api/tts_proxy/x.mp3", announce=True, enqueue=False)
    adapter.play("http://radio.local/stream.mp3", announce=False, enqueue=False)
    adapter.play("http://radio.local/next.mp3", announce=False, enqueue=True)
    announced, ordinary, enqueued = submitted
    assert (announced.priority, announced.duck, announced.interruptible) == (Priority.CRITICAL, True, False)
    assert (ordinary.priority, ordinary.duck, ordinary.interruptible) == (Priority.NORMAL, False, True)
    assert (enqueued.priority, enqueued.interruptible) == (Priority.LOW, True)
    assert [r.media for r in submitted] == [
        "https://ha.local:8123/api/tts_proxy/x.mp3",
        "http://radio.local/stream.mp3",
        "http://radio.local/next.mp3",
    ]
    assert harness.errors == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/local/doorbell.mp3", "rtsp://camera/stream", ""])
def test_play_media_of_anything_but_an_http_url_is_refused_with_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    adapter, harness, submitted = adapter_on(tmp_path, monkeypatch)
    adapter.play(url, announce=True, enqueue=False)
    assert submitted == []
    (error,) = harness.errors
    assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, "media_url")


@pytest.mark.parametrize("speak", [True, False])
def test_an_announcement_is_spoken_by_our_engine_or_with_the_setting_off_plays_home_assistants_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speak: bool
) -> None:
    adapter, harness, submitted = adapter_on(tmp_path, monkeypatch, speak_announcements=speak)
    waiting = Waiting()
    audio, chime = "http://ha.local:8123/api/tts_proxy/dinner.mp3", "http://ha.local:8123/preannounce.mp3"
    adapter.announce(cast("Connection", waiting), "Dinner is ready", audio, chime)
    (request,) = submitted
    assert (request.priority, request.chime) == (Priority.HIGH, chime)  # the pre-announce sound as the chime
    if speak:
        assert (request.text, request.media, request.fallback_media) == ("Dinner is ready", None, audio)
    else:
        assert (request.segments, request.media) == ((), audio)
    adapter.on_event(FinishedEvent(id=request.id, duration_ms=1200, engine="cartesia"))
    adapter.on_event(FinishedEvent(id=request.id, duration_ms=1200, engine="cartesia"))  # answered once
    assert waiting.finished == [True] and harness.errors == []


def test_the_players_volume_is_clamped_and_a_volume_that_is_not_a_number_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter, harness, _ = adapter_on(tmp_path, monkeypatch)

    async def check() -> None:  # the runtime defaults are saved from the event loop
        adapter.set_volume(1.7)
        assert harness.speaker.state().volume == 100
        adapter.set_volume(0.424)
        assert harness.speaker.state().volume == 42
        adapter.set_volume(float("nan"))
        assert harness.speaker.state().volume == 42
        (error,) = harness.errors
        assert (error.code, error.field) == (ErrorCode.INVALID_REQUEST, "volume")
        adapter.set_muted(True)
        assert harness.speaker.state().muted is True
        await harness.stop()

    run(check)


def test_port_0_turns_the_api_off(tmp_path: Path) -> None:
    def adapters(port: int) -> list[str]:
        settings = Settings(site="kitchen", state_file=tmp_path / "state.json", esphome={"port": port})
        return [type(adapter).__name__ for adapter in Daemon(settings, {"fake": FakeEngine()}, FakeOutput()).adapters]

    assert "EsphomeAdapter" in adapters(6053)
    assert "EsphomeAdapter" not in adapters(0)
