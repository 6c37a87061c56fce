"""The native MQTT protocol (topics.py): its inbound messages become requests and commands for the
speaker, and the speaker's events go out on its event topic. A new protocol (Rhasspy's Hermes, ...) is
one more adapter like this one."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mqtt_speaker.models import (
    ErrorCode,
    ErrorReport,
    Event,
    RequestRejected,
    SayRequest,
    Warning_,
    parse_chunk,
    parse_clear,
    parse_duck_db,
    parse_emotion,
    parse_quiet,
    parse_say,
    parse_voice,
    parse_volume,
    parse_warm,
)
from mqtt_speaker.mqtt import Inbound
from mqtt_speaker.settings import Settings
from mqtt_speaker.speaker import Speaker
from mqtt_speaker.streams import Streams
from mqtt_speaker.sync import check_at, start_instant
from mqtt_speaker.topics import Command, Topics

LOG = logging.getLogger(__name__)
ONE_SHOT = frozenset(
    {
        Command.SAY,
        Command.SAY_STREAM,
        Command.STOP,
        Command.SKIP,
        Command.CLEAR,
        Command.CACHE_CLEAR,
        Command.CACHE_WARM,
    }
)  # never acted on when retained


class NativeTopics:
    """<base>/<site>/... and <base>/all/...: say, say/stream, stop, skip, clear, set/..., cache/..."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        speaker: Speaker,
        *,
        publish: Callable[[str, str], None],
        report: Callable[[ErrorReport], None],
        warm: Callable[[list[SayRequest]], None],
    ) -> None:
        self._settings = settings
        self._topics = topics
        self.speaker = speaker
        self._publish = publish
        self.report = report
        self._warm = warm
        self.streams = Streams(settings.stream, speaker.submit, report, remember_for=settings.dedupe_window)

    def on_event(self, event: Event) -> None:
        """A request's event: out on the event topic (and a stream ends with its request)."""
        self.streams.on_event(event)
        self._publish(self._topics.event, event.to_payload())

    def close(self) -> None:
        """Shutting down: open streams end (what they have is still the speaker's to finish or drop)."""
        self.streams.close()

    def on_message(self, message: Inbound) -> bool:
        """Act on a message on one of our topics; False when it is not one."""
        command = self._topics.parse_command(message.topic)
        if command is None:
            return False
        if message.retain and command in ONE_SHOT:
            self.report(
                ErrorReport(
                    code=ErrorCode.RETAINED_COMMAND_IGNORED,
                    message=f"a retained message on {message.topic} is ignored (it would act again on every "
                    "reconnect); publish it without the retain flag, and clear this one with an empty retained one",
                    field="retain",
                )
            )
        elif command is Command.SAY:
            self._on_say(message)
        elif command is Command.SAY_STREAM:
            self._on_chunk(message)
        else:
            try:
                self._on_control(command, message.payload)
            except RequestRejected as exc:
                self.report(ErrorReport(code=ErrorCode.INVALID_COMMAND, message=exc.message, field=exc.field))
        return True

    def _on_control(self, command: Command, payload: bytes) -> None:
        speaker = self.speaker
        match command:
            case Command.STOP:
                speaker.stop("stop")
            case Command.SKIP:
                speaker.stop("skip")
            case Command.CLEAR:
                speaker.clear(parse_clear(payload))
            case Command.SET_VOLUME:
                speaker.update_defaults(volume=parse_volume(payload))
            case Command.SET_EMOTION:
                speaker.update_defaults(emotion=parse_emotion(payload))
            case Command.SET_VOICE:
                speaker.update_defaults(voice=parse_voice(payload))
            case Command.SET_QUIET:
                speaker.update_defaults(quiet=parse_quiet(payload))
            case Command.SET_DUCK_DB:
                speaker.update_defaults(duck_db=parse_duck_db(payload))
            case Command.CACHE_CLEAR:
                speaker.clear_cache()
            case Command.CACHE_WARM:
                self._warm(parse_warm(payload, max_text_length=self._settings.max_text_length))

    def _timed(self, request: SayRequest, message: Inbound) -> tuple[SayRequest, Warning_ | None]:
        """The request with its start instant (docs/sync.md): `at`, or a broadcast's (all, a group) arrival
        or `ts` plus the lead; a warning when `at` has passed. RequestRejected when `at` is too far ahead."""
        passed = check_at(request, message.received, self._settings.sync.max_ahead)
        instant = start_instant(
            at=request.at,
            sync=request.sync,
            broadcast=self._topics.is_broadcast(message.topic),
            sent=request.sent_at,
            arrived=message.received,
            lead=self._settings.sync.lead,
        )
        if instant is not None:
            ahead = (instant - message.received) * 1000
            LOG.debug("%s starts at %.6f, %.1f ms after it arrived", request.id, instant, ahead)
        return request.model_copy(update={"start_at": instant}), passed

    def _on_say(self, message: Inbound) -> None:
        try:
            parsed = parse_say(message.payload, max_text_length=self._settings.max_text_length)
            request, passed = self._timed(parsed.request, message)
        except RequestRejected as exc:
            self.report(
                ErrorReport(code=ErrorCode.INVALID_REQUEST, message=exc.message, id=exc.request_id, field=exc.field)
            )
            return
        for warning in [*parsed.warnings, *([passed] if passed else [])]:
            self.report(
                ErrorReport(
                    code=warning.code,
                    message=warning.message,
                    id=request.id,
                    field=warning.field,
                    severity="warning",
                )
            )
        self.speaker.submit(request)

    def _on_chunk(self, message: Inbound) -> None:
        try:
            chunk = parse_chunk(message.payload, max_text_length=self._settings.stream.max_length)
            request, passed = self._timed(chunk.request, message)  # used when this chunk opens its stream
        except RequestRejected as exc:
            self.report(
                ErrorReport(code=ErrorCode.INVALID_REQUEST, message=exc.message, id=exc.request_id, field=exc.field)
            )
            return
        chunk = chunk.model_copy(update={"request": request})
        for warning in [*chunk.warnings, *([passed] if passed else [])]:
            self.report(
                ErrorReport(
                    code=warning.code, message=warning.message, id=chunk.id, field=warning.field, severity="warning"
                )
            )
        self.streams.receive(chunk)
