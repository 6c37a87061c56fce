"""One client of the ESPHome API: Home Assistant's long-lived connection, its config flow's short probe, or
anyone else on the network. Its frames are read and answered as ESPHome's firmware answers them (API
1.10: the lowest that gives Home Assistant the voice assistant's announce, and the highest that asks for
nothing this device does not have); what it asks of the speaker goes to the Device (the adapter).

Nothing a client sends can hurt the daemon or another client: a frame that breaks the protocol ends that
connection (with the reason the firmware gives, where it gives one); a message that does not parse, or of
a type this API does not know, is logged and ignored; a client that has not said hello within
HELLO_TIMEOUT, or that goes quiet and does not answer a ping, is dropped; one that does not read what it
is sent is dropped before its backlog passes WRITE_LIMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mqtt_speaker import __version__
from mqtt_speaker.protocol.discovery import MANUFACTURER, MODEL
from mqtt_speaker.protocol.esphome.frames import FrameError, Framer
from mqtt_speaker.protocol.esphome.messages import DecodeError, Message, api, decode, type_id
from mqtt_speaker.protocol.esphome.server import Device, PlayerView

LOG = logging.getLogger(__name__)
API_VERSION = (1, 10)
HELLO_TIMEOUT = 10.0  # seconds from connecting to a complete hello (the Noise handshake included)
PING_AFTER = 60.0  # seconds of silence from the client after which it is pinged
PING_GRACE = 30.0  # ... and after which, without an answer, it is dropped
WRITE_LIMIT = 256 * 1024  # bytes waiting to be sent to a client that does not read: past it, it is dropped
READ_SIZE = 4096
COMPLAINTS = 5  # malformed messages from one client logged as warnings; past it, at debug level
MEDIA_PLAYER_KEY = 1
# The voice assistant's features (aioesphomeapi's VoiceAssistantFeature): audio over the API, announce.
# Output only: no microphone, no wake word.
VOICE_FEATURES = 4 | 16
# The media player's features (Home Assistant's MediaPlayerEntityFeature): volume set, mute, play media,
# stop, browse media, announce. At API 1.10 Home Assistant uses its own fixed set, which is the same.
PLAYER_FEATURES = 4 | 8 | 512 | 4096 | 131072 | 1048576
IDLE, PLAYING = 1, 2  # MediaPlayerState: only these (an announcement is reported as playing, as ESPHome does)
COMMAND_STOP, COMMAND_MUTE, COMMAND_UNMUTE, COMMAND_ENQUEUE = 2, 3, 4, 8


def printable(text: str, limit: int = 64) -> str:
    """What a client says about itself, fit for a log line."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


class Connection:
    """One client, from its first byte to the close (event loop only)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framer: Framer, device: Device
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._framer = framer
        self._device = device
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        self.client = "?"
        self._hello = False
        self._subscribed = False
        self._closing = False
        self._complaints = 0
        self._shown: PlayerView | None = None
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            api.HelloRequest: self._on_hello,
            api.AuthenticationRequest: lambda _: self._send(api.AuthenticationResponse(invalid_password=False)),
            api.DisconnectRequest: self._on_disconnect,
            api.DisconnectResponse: lambda _: self.close(),
            api.PingRequest: lambda _: self._send(api.PingResponse()),
            api.DeviceInfoRequest: lambda _: self._send(self._device_info()),
            api.ListEntitiesRequest: self._on_list_entities,
            api.SubscribeStatesRequest: self._on_subscribe_states,
            api.MediaPlayerCommandRequest: self._on_media_player_command,
            api.VoiceAssistantConfigurationRequest: lambda _: self._send(
                api.VoiceAssistantConfigurationResponse(max_active_wake_words=0)
            ),
            api.VoiceAssistantAnnounceRequest: self._on_announce,
            api.NoiseEncryptionSetKeyRequest: lambda _: self._send(api.NoiseEncryptionSetKeyResponse(success=False)),
        }

    # ------------------------------------------------------------------------------------ reading

    async def run(self) -> None:
        """Read and answer until the client leaves, breaks the protocol, or times out."""
        loop = asyncio.get_running_loop()
        hello_by = loop.time() + HELLO_TIMEOUT
        pinged = False
        try:
            while not self._closing:
                timeout = max(0.0, hello_by - loop.time()) if not self._hello else PING_GRACE if pinged else PING_AFTER
                try:
                    data = await asyncio.wait_for(self._reader.read(READ_SIZE), timeout)
                except TimeoutError:
                    if not self._hello:
                        LOG.warning("ESPHome API: %s said no hello within %.0f s; dropped", self.peer, HELLO_TIMEOUT)
                        return
                    if pinged:
                        LOG.warning("ESPHome API: %s (%s) answered no ping; dropped", self.client, self.peer)
                        return
                    self._send(api.PingRequest())
                    pinged = True
                    continue
                if not data:
                    return
                pinged = False
                self._received(data)
        except OSError as exc:
            LOG.info("ESPHome API: %s (%s): %s", self.client, self.peer, exc)
        finally:
            self.close()
            self._device.closed(self)

    def _received(self, data: bytes) -> None:
        try:
            messages = self._framer.receive(data)
        except FrameError as exc:
            LOG.warning("ESPHome API: %s (%s): %s; dropped", self.client, self.peer, exc)
            self._write(self._framer.outgoing() + exc.reply)  # the device's hello first: it goes out before any check
            self.close()
            return
        self._write(self._framer.outgoing())
        for message_type, payload in messages:
            if self._closing:
                return
            self._handle(message_type, payload)

    def _handle(self, message_type: int, payload: bytes) -> None:
        try:
            message = decode(message_type, payload)
        except DecodeError:
            self._complain(f"a malformed message of type {message_type} ({len(payload)} bytes); ignored")
            return
        if message is None:
            self._complain(f"a message of a type this API does not know ({message_type}); ignored")
            return
        if not self._hello and not isinstance(message, api.HelloRequest):
            LOG.warning("ESPHome API: %s sent %s before its hello; dropped", self.peer, type(message).__name__)
            self.close()
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            LOG.debug("ESPHome API: %s (%s): %s not used here", self.client, self.peer, type(message).__name__)
            return
        handler(message)

    def _complain(self, what: str) -> None:
        self._complaints += 1
        level = logging.WARNING if self._complaints <= COMPLAINTS else logging.DEBUG
        LOG.log(level, "ESPHome API: %s (%s): %s", self.client, self.peer, what)

    # ----------------------------------------------------------------------------------- messages

    def _on_hello(self, hello: Any) -> None:
        self._hello = True
        self.client = printable(hello.client_info) or "a client"
        LOG.info("ESPHome API: %s connected from %s", self.client, self.peer)
        major, minor = API_VERSION
        self._send(
            api.HelloResponse(
                api_version_major=major,
                api_version_minor=minor,
                server_info=f"mqtt-speaker {__version__}"[:32],
                name=self._device.identity.name,
            )
        )

    def _on_disconnect(self, _request: Any) -> None:
        self._send(api.DisconnectResponse())
        self.close()

    def _device_info(self) -> Message:
        identity = self._device.identity
        return api.DeviceInfoResponse(
            uses_password=False,
            name=identity.name,
            friendly_name=identity.friendly_name,
            mac_address=identity.mac_pretty,
            esphome_version=__version__,
            manufacturer=MANUFACTURER,
            model=MODEL,
            voice_assistant_feature_flags=VOICE_FEATURES,
            api_encryption_supported=self._device.encrypted,
        )

    def _on_list_entities(self, _request: Any) -> None:
        self._send(
            api.ListEntitiesMediaPlayerResponse(
                object_id="media_player",
                key=MEDIA_PLAYER_KEY,
                name="Media player",
                icon="mdi:speaker",
                supports_pause=False,
                feature_flags=PLAYER_FEATURES,
            )
        )
        self._send(api.ListEntitiesDoneResponse())

    def _on_subscribe_states(self, _request: Any) -> None:
        self._subscribed = True
        self._shown = None
        self.show(self._device.player())

    def _on_media_player_command(self, command: Any) -> None:
        if command.key != MEDIA_PLAYER_KEY:
            self._complain(f"a command for entity {command.key}, which is not this device's; ignored")
            return
        if command.has_volume:
            self._device.set_volume(command.volume)
        if command.has_media_url:
            enqueue = command.has_command and command.command == COMMAND_ENQUEUE
            announce = command.has_announcement and command.announcement
            self._device.play(command.media_url, announce=announce, enqueue=enqueue)
        elif command.has_command:
            if command.command == COMMAND_STOP:
                self._device.stop_playing()
            elif command.command in (COMMAND_MUTE, COMMAND_UNMUTE):
                self._device.set_muted(command.command == COMMAND_MUTE)
            else:  # play and pause (nothing pauses here), and what is not offered
                LOG.debug("ESPHome API: %s: media player command %d not supported", self.client, command.command)

    def _on_announce(self, request: Any) -> None:
        self._device.announce(self, request.text, request.media_id, request.preannounce_media_id)

    # ----------------------------------------------------------------------------------- sending

    def show(self, view: PlayerView) -> None:
        """The media player's state, to a client that subscribed to states, when it changed."""
        if not self._subscribed or view == self._shown:
            return
        self._shown = view
        state = PLAYING if view.playing else IDLE
        message = api.MediaPlayerStateResponse(key=MEDIA_PLAYER_KEY, state=state, volume=view.volume, muted=view.muted)
        self._send(message)

    def announce_finished(self, success: bool) -> None:
        self._send(api.VoiceAssistantAnnounceFinished(success=success))

    def say_goodbye(self) -> None:
        """The daemon stops: asked to disconnect, Home Assistant takes the drop as expected and comes back."""
        if self._hello:
            self._send(api.DisconnectRequest())

    def _send(self, message: Message) -> None:
        if not self._framer.ready:
            return
        self._write(self._framer.frame(type_id(message), message.SerializeToString()))

    def _write(self, data: bytes) -> None:
        if not data or self._writer.is_closing():
            return
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() > WRITE_LIMIT:
            LOG.warning("ESPHome API: %s (%s) does not read what it is sent; dropped", self.client, self.peer)
            self._writer.transport.abort()
            self._closing = True

    def close(self) -> None:
        """End the connection (what is written still goes out first)."""
        self._closing = True
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()
