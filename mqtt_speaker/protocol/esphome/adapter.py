"""The ESPHome native API as one more way into the speaker (protocol/adapter.py): Home Assistant's media
player and assist satellite become requests in the same queue as the MQTT topics' (priorities, ducking,
quiet mode, TTL, the events on MQTT), and the speaker's state becomes the media player's.

- play_media: ordinary media plays at normal priority and gives way to whatever comes next (a say, an
  announcement, another play_media: it is interrupted, reason `priority`); `enqueue: add` queues it behind
  everything (low priority); `announce: true` (also what tts.speak sends) plays it at
  `esphome.announce_priority` with other audio lowered.
- assist_satellite.announce: its text is spoken by the speaker's engine (default emotion and voice, the
  cache, the cost guard), Home Assistant's audio of it played only when no engine can speak it or when
  `esphome.speak_announcements` is off; the pre-announce sound plays as the chime. The announcement's end
  (finished or not, dropped or failed too) is answered at once, as Home Assistant waits for it.
- Volume and mute are the speaker's runtime defaults, the same ones set/volume and set/mute change.
- Stop ends what plays now, as the stop topic does.
Bad input is logged; a request that was made gets an error on the error topic (and its events).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from mqtt_speaker.core.speaker import Speaker
from mqtt_speaker.protocol.adapter import BaseAdapter
from mqtt_speaker.protocol.esphome.frames import Framer, PlaintextFramer, noise_psk
from mqtt_speaker.protocol.esphome.identity import identity
from mqtt_speaker.protocol.esphome.mdns import Advertisement
from mqtt_speaker.protocol.esphome.server import ApiServer, PlayerView
from mqtt_speaker.protocol.payloads import clean_text
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import (
    TERMINAL_EVENTS,
    ErrorCode,
    ErrorReport,
    Event,
    EventType,
    Priority,
    SayRequest,
    Segment,
    SpeakerState,
    StateReport,
    is_media_url,
)

if TYPE_CHECKING:
    from mqtt_speaker.protocol.esphome.connection import Connection

LOG = logging.getLogger(__name__)
MAX_PENDING_ANNOUNCEMENTS = 64  # announcements waiting for their end, over every client


class EsphomeAdapter(BaseAdapter):
    """Serves the API while the daemon runs (esphome.port not 0); subscribes to no MQTT topic."""

    def __init__(self, settings: Settings, speaker: Speaker, report: Callable[[ErrorReport], None]) -> None:
        self._settings = settings
        self._speaker = speaker
        self._report = report
        self.identity = identity(settings)
        key = settings.esphome.encryption_key
        self._psk = noise_psk(key.get_secret_value()) if key is not None else None
        self.encrypted = self._psk is not None
        self._priority = Priority(settings.esphome.announce_priority)
        self._server = ApiServer(settings.esphome.host, settings.esphome.port, self._framer, self)
        self._advertisement = (
            Advertisement(self.identity, settings.esphome.host, self.encrypted) if settings.esphome.mdns else None
        )
        self._announcements: dict[str, Connection] = {}
        self._view = _view(speaker.state())

    def _framer(self) -> Framer:
        if self._psk is None:
            return PlaintextFramer()
        from mqtt_speaker.protocol.esphome.noise import NoiseFramer  # libsodium: only where a key is set

        return NoiseFramer(self._psk, self.identity.name, self.identity.mac_hex)

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        try:
            await self._server.start()
        except OSError as exc:
            where = f"{self._settings.esphome.host}:{self._settings.esphome.port}"
            LOG.error("ESPHome API: cannot listen on %s: %s", where, exc)
            self._report(
                ErrorReport(
                    code=ErrorCode.ESPHOME_UNAVAILABLE,
                    message=f"the ESPHome API cannot listen on {where} ({exc.strerror or exc}); "
                    "set esphome.port to a free port, or 0 to turn it off",
                    field="esphome.port",
                )
            )
            return
        LOG.info(
            "ESPHome API: device %s (%s), %s",
            self.identity.name,
            self.identity.mac,
            "encrypted" if self.encrypted else "not encrypted: anyone on the network can use it",
        )
        if self._advertisement is not None:
            self._advertisement.start(self.port)

    async def stop(self) -> None:
        if self._advertisement is not None:
            await self._advertisement.stop()
        await self._server.stop()

    # ------------------------------------------------------------------------ the speaker, out

    def on_state(self, state: StateReport) -> None:
        self._view = _view(state)
        for connection in self._server.connections:
            connection.show(self._view)

    def on_event(self, event: Event) -> None:
        if event.event_type in TERMINAL_EVENTS and (connection := self._announcements.pop(event.id, None)):
            connection.announce_finished(event.event_type is EventType.FINISHED)

    # ----------------------------------------------------------------- a connection's requests

    def player(self) -> PlayerView:
        return self._view

    def play(self, url: str, *, announce: bool, enqueue: bool) -> None:
        if not is_media_url(url):
            self._refuse(f"play_media: {url[:80]!r} is not an http(s) URL the speaker can fetch", "media_url")
            return
        priority = self._priority if announce else Priority.LOW if enqueue else Priority.NORMAL
        self._submit(
            SayRequest(
                id=_new_id(),
                segments=(),
                media=url,
                priority=priority,
                interruptible=not announce,
                duck=announce,  # an announcement lowers other audio; ordinary media is the other audio
            )
        )

    def announce(self, connection: Connection, text: str, media_id: str, preannounce: str) -> None:
        """An assist satellite announcement; its end is answered on `connection`."""
        media = media_id if is_media_url(media_id) else None
        spoken = clean_text(text).strip()
        if len(spoken) > self._settings.max_text_length and media is not None:
            self._refuse(
                f"announce: the message's {len(spoken)} characters are more than max_text_length "
                f"({self._settings.max_text_length}); Home Assistant's audio of it is played instead",
                "text",
                code=ErrorCode.TEXT_TOO_LONG,
                severity="warning",
            )
            spoken = ""
        if not self._settings.esphome.speak_announcements and media is not None:
            spoken = ""
        if (not spoken and media is None) or len(spoken) > self._settings.max_text_length:
            self._refuse("announce: neither a message the speaker can speak nor an http(s) media URL", "text")
            connection.announce_finished(False)
            return
        if len(self._announcements) >= MAX_PENDING_ANNOUNCEMENTS:
            self._refuse(f"announce: {MAX_PENDING_ANNOUNCEMENTS} announcements already wait", "text")
            connection.announce_finished(False)
            return
        request = SayRequest(
            id=_new_id(),
            segments=(Segment(text=spoken),) if spoken else (),
            media=None if spoken else media,
            fallback_media=media if spoken else None,
            chime=preannounce if is_media_url(preannounce) else False,
            priority=self._priority,
        )
        self._announcements[request.id] = connection
        self._submit(request)

    def set_volume(self, volume: float) -> None:
        if not math.isfinite(volume):
            self._refuse(f"volume_set: {volume} is not a volume", "volume")
            return
        self._speaker.update_defaults(volume=round(min(max(volume, 0.0), 1.0) * 100))

    def set_muted(self, muted: bool) -> None:
        self._speaker.update_defaults(muted=muted)

    def stop_playing(self) -> None:
        self._speaker.stop("stop")

    def closed(self, connection: Connection) -> None:
        """A client left: its announcements play on, nobody waits for their end."""
        for request_id in [rid for rid, waiting in self._announcements.items() if waiting is connection]:
            del self._announcements[request_id]

    def _submit(self, request: SayRequest) -> None:
        LOG.info("ESPHome API: %s %s", request.id, "media" if request.media else f"{len(request.text)} characters")
        self._speaker.submit(request)

    def _refuse(
        self,
        message: str,
        field: str,
        *,
        code: ErrorCode = ErrorCode.INVALID_REQUEST,
        severity: Literal["error", "warning"] = "error",
    ) -> None:
        LOG.warning("ESPHome API: %s", message)
        self._report(ErrorReport(code=code, message=message, field=field, severity=severity))


def _new_id() -> str:
    return f"esphome-{uuid.uuid4().hex[:12]}"


def _view(state: StateReport) -> PlayerView:
    return PlayerView(playing=state.state is SpeakerState.SPEAKING, volume=state.volume / 100, muted=state.muted)
