"""The native MQTT protocol (topics.py): messages on its topics become requests and commands for the
speaker; the speaker's events, errors and state go out on its event, error and state topics, and its
availability on the availability topic. Another protocol is one more adapter like this one (adapter.py).
"""

from __future__ import annotations

import logging

from mqtt_speaker.core.speaker import Speaker
from mqtt_speaker.protocol.adapter import BaseAdapter
from mqtt_speaker.protocol.errors import ErrorFlood
from mqtt_speaker.protocol.fanout import House
from mqtt_speaker.protocol.link import Inbound, MqttLink
from mqtt_speaker.protocol.payloads import (
    Refusal,
    RequestRejected,
    encode,
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
from mqtt_speaker.protocol.streams import Streams
from mqtt_speaker.protocol.timing import ClockWatch, check_at, start_instant
from mqtt_speaker.protocol.topics import ONLINE, Command, Topics
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.text import LiveText
from mqtt_speaker.speech.vocabulary import ErrorCode, ErrorReport, Event, SayRequest, StateReport, Warning_

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
HOUSE_STOPS = frozenset({Command.STOP, Command.SKIP})  # to every room of a scope: its syntheses stop too


class NativeTopics(BaseAdapter):
    """<base>/<site>/..., <base>/all/... and <base>/group/<name>/...: say, say/stream, stop, skip, clear,
    set/..., cache/... in; event, error, state and availability out."""

    def __init__(
        self, settings: Settings, topics: Topics, speaker: Speaker, link: MqttLink, house: House | None = None
    ) -> None:
        self._settings = settings
        self._topics = topics
        self.speaker = speaker
        self._link = link
        self._house = house  # a broadcast's audio, synthesized once for the house (protocol/fanout.py)
        self._errors = ErrorFlood(settings.max_errors_per_second, self._publish_error)
        self.streams = Streams(settings.stream, self._submit, self.on_error, remember_for=settings.dedupe_window)
        self._last_state: str | None = None
        self._clock = ClockWatch()
        self._stopped = False  # from here on nothing says `online`: `offline` is, or is about to be, the last word

    def subscriptions(self) -> list[str]:
        return self._topics.command_subscriptions()

    def on_connected(self) -> None:
        """Availability and the state, retained (also after Home Assistant's birth message)."""
        if self._stopped:
            return
        self._link.publish(self._topics.availability, ONLINE, retain=True)
        self._last_state = None
        self.on_state(self.speaker.state())

    def on_event(self, event: Event) -> None:
        """A request's event: out on the event topic (and a stream ends with its request)."""
        self.streams.on_event(event)
        self._link.publish(self._topics.event, encode(event))

    def on_error(self, error: ErrorReport) -> None:
        self._errors.report(error)

    def _publish_error(self, error: ErrorReport) -> None:
        self._link.publish(self._topics.error, encode(error))

    def on_state(self, state: StateReport) -> None:
        """Retained, when it differs from the last one published."""
        payload = encode(state)
        if payload != self._last_state:
            self._last_state = payload
            self._link.publish(self._topics.state, payload, retain=True)

    async def stop(self) -> None:
        """Shutting down: open streams end (what they have is still the speaker's to finish or drop)."""
        self._stopped = True
        self.streams.close()

    def on_message(self, message: Inbound) -> bool:
        """Act on a message on one of our topics; False when it is not one."""
        command = self._topics.parse_command(message.topic)
        if command is None:
            return False
        if message.retain and command in ONE_SHOT and not message.payload:
            LOG.debug("%s: a retained message cleared", message.topic)  # mosquitto_pub -r -n, as the README says
        elif message.retain and command in ONE_SHOT:
            self.on_error(
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
                scope = self._topics.scope(message.topic)
                if command in HOUSE_STOPS and scope is not None and self._house is not None:
                    self._house.stop_scope(scope)  # the synthesis for every room of the scope stops too
            except RequestRejected as exc:
                self.on_error(ErrorReport(code=ErrorCode.INVALID_COMMAND, message=exc.message, field=exc.field))
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
                speaker.warm(parse_warm(payload, max_text_length=self._settings.max_text_length))

    def _timed(self, request: SayRequest, message: Inbound) -> tuple[SayRequest, list[Warning_]]:
        """The request with its start instant (docs/sync.md): `at`, or a broadcast's (all, a group) arrival
        or `ts` plus the lead; warnings when `at` has passed or the clock is not synchronized.
        RequestRejected when `at` is too far ahead."""
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
        scope = self._topics.scope(message.topic)
        warnings = [warning for warning in (passed, self._clock.check(instant)) if warning is not None]
        return request.model_copy(update={"start_at": instant, "scope": scope}), warnings

    def _on_say(self, message: Inbound) -> None:
        try:
            parsed = parse_say(message.payload, max_text_length=self._settings.max_text_length)
            request, timing = self._timed(parsed.request, message)
        except RequestRejected as exc:
            self.on_error(
                ErrorReport(code=ErrorCode.INVALID_REQUEST, message=exc.message, id=exc.request_id, field=exc.field)
            )
            return
        self._warn([*parsed.warnings, *timing], request.id)
        text = LiveText.complete(request.segments)
        self._submit(request, text, message.payload)

    def _on_chunk(self, message: Inbound) -> None:
        try:
            chunk = parse_chunk(message.payload, max_text_length=self._settings.stream.max_length)
        except RequestRejected as exc:
            self.on_error(
                ErrorReport(code=ErrorCode.INVALID_REQUEST, message=exc.message, id=exc.request_id, field=exc.field)
            )
            return
        if isinstance(chunk.request, SayRequest):  # its start instant, for when it opens its stream
            try:
                request, timing = self._timed(chunk.request, message)
            except RequestRejected as exc:
                chunk = chunk.model_copy(update={"request": Refusal(message=exc.message, field=exc.field)})
            else:
                opening = [*chunk.opening_warnings, *timing]
                chunk = chunk.model_copy(update={"request": request, "opening_warnings": opening})
        self.streams.receive(chunk)

    def _submit(self, request: SayRequest, text: LiveText, message: bytes | None = None) -> None:
        """To the speaker; a broadcast (a scope) shared with the house first, when the house shares."""
        if request.scope is not None and self._house is not None:
            request = self._house.share(request, text, message)
        self.speaker.submit(request, text)

    def _warn(self, warnings: list[Warning_], request_id: str) -> None:
        for warning in warnings:
            self.on_error(warning.report(request_id))
