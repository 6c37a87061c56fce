"""The daemon: wires the MQTT core, the speaker and the engine together and answers inbound messages."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time

from mqtt_speaker.audio import Output, SoundDevicePlayer, WavWriter
from mqtt_speaker.cache import AudioCache
from mqtt_speaker.discovery import discovery_messages
from mqtt_speaker.engines.base import Engine
from mqtt_speaker.engines.espeak import EspeakEngine
from mqtt_speaker.engines.piper import PiperEngine
from mqtt_speaker.models import (
    ErrorCode,
    ErrorReport,
    Event,
    RequestRejected,
    parse_clear,
    parse_emotion,
    parse_quiet,
    parse_say,
    parse_voice,
    parse_volume,
    parse_warm,
)
from mqtt_speaker.mqtt import Inbound, MqttLink, Will
from mqtt_speaker.settings import Settings
from mqtt_speaker.speaker import Speaker
from mqtt_speaker.systemd import Notifier
from mqtt_speaker.topics import Command, Topics

LOG = logging.getLogger(__name__)
ONLINE, OFFLINE = "online", "offline"
ONE_SHOT = frozenset(
    {Command.SAY, Command.STOP, Command.SKIP, Command.CLEAR, Command.CACHE_CLEAR, Command.CACHE_WARM}
)  # never acted on when retained


def build_engines(settings: Settings) -> dict[str, Engine]:
    """The primary engine and the installed fallbacks (Cartesia only with an API key or when chosen)."""
    wanted = [settings.primary_engine, *settings.fallback]
    engines: dict[str, Engine] = {}
    for name in dict.fromkeys(wanted):
        if name == "cartesia" and (settings.has_api_key or settings.primary_engine == "cartesia"):
            from mqtt_speaker.engines.cartesia import CartesiaEngine  # the SDK is imported only when used

            engines[name] = CartesiaEngine(settings.cartesia)
        elif name == "piper" and (settings.piper.installed or settings.primary_engine == "piper"):
            engines[name] = PiperEngine(settings.piper)
        elif name == "espeak":
            engines[name] = EspeakEngine(settings.espeak)
    return engines


def build_output(settings: Settings) -> Output:
    if settings.audio.output_dir is not None:
        return WavWriter(settings.audio.output_dir)
    return SoundDevicePlayer(settings.audio)


class Daemon:
    def __init__(self, settings: Settings, engines: dict[str, Engine], output: Output) -> None:
        self._settings = settings
        self._topics = Topics(settings.base_topic, settings.site, settings.homeassistant.prefix)
        self._engines = engines
        self._output = output
        self._last_state: str | None = None
        self._notifier = Notifier()
        self._error_window = 0.0
        self._errors_in_window = 0
        self._suppressed = 0
        self._background: set[asyncio.Task[None]] = set()
        self.speaker = Speaker(
            engines,
            output,
            settings,
            primary=settings.primary_engine,
            cache=AudioCache(settings.cache),
            publish_event=self._publish_event,
            report_error=self.report,
            on_change=self._publish_state,
        )
        self._link = MqttLink(
            settings.mqtt,
            settings.client_id,
            self._topics.subscriptions(),
            Will(self._topics.availability, OFFLINE),
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_problem=self._notifier.status,
        )

    # ---------------------------------------------------------------------------------- publishing

    def report(self, error: ErrorReport) -> None:
        """Log a problem and publish it on the error topic, at most max_errors_per_second a second:
        past that, one summary error a second says how many were left out (a flood of bad input must
        not become a flood of errors)."""
        now = time.monotonic()
        if now - self._error_window >= 1.0:
            self._error_window, self._errors_in_window = now, 0
        self._errors_in_window += 1
        line = "%s%s: %s", error.code, f" [{error.id}]" if error.id else "", error.message
        if self._errors_in_window > self._settings.max_errors_per_second:
            self._suppressed += 1
            LOG.debug(*line)
            if self._suppressed == 1:
                asyncio.get_running_loop().call_later(1.0, self._report_suppressed)
            return
        LOG.log(logging.WARNING if error.severity == "warning" else logging.ERROR, *line)
        self._link.publish(self._topics.error, error.to_payload())

    def _report_suppressed(self) -> None:
        count, self._suppressed = self._suppressed, 0
        summary = ErrorReport(
            code=ErrorCode.ERRORS_SUPPRESSED,
            message=f"{count} more errors in the last second were not published "
            f"(more than {self._settings.max_errors_per_second} a second)",
        )
        LOG.warning("%s: %s", summary.code, summary.message)
        self._link.publish(self._topics.error, summary.to_payload())

    def _publish_event(self, event: Event) -> None:
        self._link.publish(self._topics.event, event.to_payload())

    def _publish_state(self, force: bool = False) -> None:
        payload = self.speaker.state().to_payload()
        if force or payload != self._last_state:
            self._last_state = payload
            self._link.publish(self._topics.state, payload, retain=True)

    def _on_connected(self) -> None:
        self._announce()
        self._notifier.status(f"speaking for {self._topics.command(Command.SAY)} ({self.speaker.engine_in_use()})")

    def _announce(self) -> None:
        """Availability, state and Home Assistant discovery, all retained."""
        self._link.publish(self._topics.availability, ONLINE, retain=True)
        self._publish_state(force=True)
        for topic, payload in discovery_messages(self._settings, self._topics):
            self._link.publish(topic, payload, retain=True)

    def _on_homeassistant_status(self, payload: bytes) -> None:
        """Home Assistant (re)started: send discovery again, after a short random delay (as it advises,
        so that a house full of devices does not answer all at once)."""
        if payload.strip().lower() == b"online":
            delay = random.uniform(0.5, 3.0)
            LOG.info("Home Assistant is online: sending discovery again in %.1f s", delay)
            asyncio.get_running_loop().call_later(delay, self._announce)
        self._notifier.status(f"speaking for {self._topics.command(Command.SAY)} ({self.speaker.engine_in_use()})")

    # ------------------------------------------------------------------------------------- inbound

    def _on_message(self, message: Inbound) -> None:
        if message.topic == self._topics.homeassistant_status:
            self._on_homeassistant_status(message.payload)
            return
        command = self._topics.parse_command(message.topic)
        if command is None:
            return
        if message.retain and command in ONE_SHOT:
            self.report(
                ErrorReport(
                    code=ErrorCode.RETAINED_COMMAND_IGNORED,
                    message=f"a retained message on {message.topic} is ignored (it would act again on every "
                    "reconnect); publish it without the retain flag, and clear this one with an empty retained one",
                    field="retain",
                )
            )
            return
        if command is Command.SAY:
            self._on_say(message)
            return
        try:
            self._on_control(command, message.payload)
        except RequestRejected as exc:
            self.report(ErrorReport(code=ErrorCode.INVALID_COMMAND, message=exc.message, field=exc.field))

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
            case Command.CACHE_CLEAR:
                speaker.clear_cache()
            case Command.CACHE_WARM:
                requests = parse_warm(payload, max_text_length=self._settings.max_text_length)
                self._background.add(task := asyncio.create_task(speaker.warm(requests)))
                task.add_done_callback(self._background.discard)

    def _on_say(self, message: Inbound) -> None:
        try:
            parsed = parse_say(message.payload, max_text_length=self._settings.max_text_length)
        except RequestRejected as exc:
            self.report(
                ErrorReport(code=ErrorCode.INVALID_REQUEST, message=exc.message, id=exc.request_id, field=exc.field)
            )
            return
        for warning in parsed.warnings:
            self.report(
                ErrorReport(
                    code=warning.code,
                    message=warning.message,
                    id=parsed.request.id,
                    field=warning.field,
                    severity="warning",
                )
            )
        self.speaker.submit(parsed.request)

    # ----------------------------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down cleanly: every request ends, `offline` is published."""
        LOG.info(
            "mqtt-speaker for site %r on %s:%d, engine %s",
            self._settings.site,
            self._settings.mqtt.host,
            self._settings.mqtt.port,
            self.speaker.engine_in_use(),
        )
        self._link.start()
        # Ready at once, broker or not (a broker down at boot must not hold up the boot); STATUS says why.
        self._notifier.ready(f"waiting for the broker at {self._settings.mqtt.host}:{self._settings.mqtt.port}")
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        await asyncio.gather(*(engine.start() for engine in self._engines.values()))
        worker = asyncio.create_task(self.speaker.run(), name="speaker")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        self._notifier.stopping()
        await self.speaker.shutdown(grace=1.5)
        for task in self._background:  # cache warming: it must not reopen a socket being closed
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        worker.cancel()
        crashed = None if worker.cancelled() or not worker.done() else worker.exception()
        await asyncio.gather(worker, return_exceptions=True)
        await self._output.close()
        await asyncio.gather(*(engine.close() for engine in self._engines.values()))
        await self._link.stop(last_words=(self._topics.availability, OFFLINE))
        watchdog.cancel()
        self._notifier.close()
        if crashed is not None:
            raise RuntimeError("the speaker stopped unexpectedly") from crashed
        LOG.info("stopped")

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: if the loop hangs, the pings stop and systemd restarts us."""
        interval = self._notifier.watchdog_interval()
        while interval is not None:
            self._notifier.watchdog()
            await asyncio.sleep(interval)


async def run_daemon(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(settings, build_engines(settings), build_output(settings))
    await daemon.run(stop)
