"""The ESPHome API's parts alone: the framing (plaintext, and Noise against the Noise library as the
client's side), the device's identity, its settings and secrets, the MQTT device it shares with Home
Assistant, and the mDNS advertisement (a real one on the loopback interface, browsed with python-zeroconf).
The real clients against the real daemon: test_esphome_e2e.py; against Home Assistant: test_homeassistant.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from noise.connection import NoiseConnection
from zeroconf.asyncio import AsyncServiceInfo

from mqtt_speaker.protocol.discovery import discovery_messages
from mqtt_speaker.protocol.esphome.frames import MAC_FAILURE, FrameError, PlaintextFramer
from mqtt_speaker.protocol.esphome.identity import Identity, device_mac
from mqtt_speaker.protocol.esphome.mdns import Advertisement
from mqtt_speaker.protocol.esphome.noise import NoiseFramer
from mqtt_speaker.protocol.topics import Topics
from mqtt_speaker.settings import ConfigError, Settings, load_settings
from tests import mdns
from tests.conftest import free_port

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
