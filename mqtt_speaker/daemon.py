"""The daemon: wires the MQTT link, the speaker, the engines and the protocol adapters (the native topics,
Home Assistant discovery) together, and runs them until it is stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from mqtt_speaker.adapters.homeassistant import HomeAssistantDiscovery
from mqtt_speaker.adapters.native import NativeTopics
from mqtt_speaker.audio import Output, WavWriter
from mqtt_speaker.cache import AudioCache
from mqtt_speaker.ducking import Ducker, record_path, tag_own_stream
from mqtt_speaker.engines.base import Engine
from mqtt_speaker.engines.registry import build_engines
from mqtt_speaker.models import (
    ErrorCode,
    ErrorReport,
    Event,
    SayRequest,
)
from mqtt_speaker.mqtt import Inbound, MqttLink, Will
from mqtt_speaker.pulse import sound_player
from mqtt_speaker.settings import Settings
from mqtt_speaker.speaker import Speaker
from mqtt_speaker.systemd import Notifier
from mqtt_speaker.topics import Command, Topics

LOG = logging.getLogger(__name__)
WARM_QUEUE = 8  # cache/warm lists waiting for the one warmer (each holds at most 100 texts)
ONLINE, OFFLINE = "online", "offline"
CLOCK_CHECK_INTERVAL = 60.0  # seconds


def build_output(settings: Settings) -> Output:
    if settings.audio.output_dir is not None:
        return WavWriter(settings.audio.output_dir)
    tag_own_stream(settings.audio.role)
    return sound_player(settings.audio)


def build_ducker(settings: Settings) -> Ducker | None:
    """The ducker when we play to a sound device (not when writing WAV files)."""
    return None if settings.audio.output_dir is not None else Ducker(record_path(settings.state_file))


class Daemon:
    def __init__(
        self, settings: Settings, engines: dict[str, Engine], output: Output, ducker: Ducker | None = None
    ) -> None:
        self._settings = settings
        self._topics = Topics(
            settings.base_topic, settings.site, settings.homeassistant.prefix, tuple(settings.sync.groups)
        )
        self._engines = engines
        self._output = output
        self._ducker = ducker
        self._last_state: str | None = None
        self._notifier = Notifier()
        self._error_window = 0.0
        self._errors_in_window = 0
        self._suppressed = 0
        self._warm_queue: asyncio.Queue[list[SayRequest]] = asyncio.Queue(WARM_QUEUE)
        self._stopping = False  # from here on nothing says `online`: `offline` is, or is about to be, the last word
        self.speaker = Speaker(
            engines,
            output,
            settings,
            primary=settings.primary_engine,
            cache=AudioCache(settings.cache),
            ducker=ducker,
            publish_event=self._publish_event,
            report_error=self.report,
            on_change=self._publish_state,
        )
        self._native = NativeTopics(
            settings, self._topics, self.speaker, publish=self._link_publish, report=self.report, warm=self._queue_warm
        )
        self._homeassistant = HomeAssistantDiscovery(
            settings, self._topics, self.speaker, publish=self._publish_retained, on_birth=self._announce
        )
        self._link = MqttLink(
            settings.mqtt,
            settings.client_id,
            self._topics.subscriptions(),
            Will(self._topics.availability, OFFLINE),
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_problem=self._notifier.status,
            on_dropped=lambda message: self.report(ErrorReport(code=ErrorCode.MESSAGES_DROPPED, message=message)),
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
        self._native.on_event(event)

    def _link_publish(self, topic: str, payload: str) -> None:
        self._link.publish(topic, payload)

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
        if self._stopping:
            return
        self._link.publish(self._topics.availability, ONLINE, retain=True)
        self._publish_state(force=True)
        self._homeassistant.publish()

    def _publish_retained(self, topic: str, payload: str) -> None:
        self._link.publish(topic, payload, retain=True)

    # ------------------------------------------------------------------------------------- inbound

    def _on_message(self, message: Inbound) -> None:
        if self._homeassistant.on_message(message.topic, message.payload):
            self._notifier.status(f"speaking for {self._topics.command(Command.SAY)} ({self.speaker.engine_in_use()})")
            return
        self._native.on_message(message)

    def _queue_warm(self, requests: list[SayRequest]) -> None:
        """Hand a cache/warm list to the one warmer; refused at shutdown or when WARM_QUEUE lists wait."""
        why = "the daemon is shutting down" if self._stopping else None
        if why is None:
            try:
                self._warm_queue.put_nowait(requests)
                return
            except asyncio.QueueFull:
                why = f"{WARM_QUEUE} cache/warm lists are already waiting"
        self.report(ErrorReport(code=ErrorCode.QUEUE_FULL, message=f"cache warm: not done, {why}", field="warm"))

    async def _warmer(self) -> None:
        """The one task that warms the cache, a list at a time (cancelled at shutdown, before engines close)."""
        while True:
            requests = await self._warm_queue.get()
            try:
                await self.speaker.warm(requests)
            except Exception:  # one bad list must not end warming for good
                LOG.exception("cache warm failed unexpectedly")

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
        if self._ducker is not None:
            self._ducker.start()  # restores what a previous run left lowered
        # Ready at once, broker or not (a broker down at boot must not hold up the boot); STATUS says why.
        self._notifier.ready(f"waiting for the broker at {self._settings.mqtt.host}:{self._settings.mqtt.port}")
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        clock = asyncio.create_task(self._watch_clock(), name="clock")
        await asyncio.gather(*(engine.start() for engine in self._engines.values()))
        worker = asyncio.create_task(self.speaker.run(), name="speaker")
        warmer = asyncio.create_task(self._warmer(), name="warmer")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        self._stopping = True
        self._homeassistant.stop()
        self._notifier.stopping()
        self._native.close()
        await self.speaker.shutdown(grace=1.5)
        warmer.cancel()  # cache warming must not reopen a socket being closed
        await asyncio.gather(warmer, return_exceptions=True)
        worker.cancel()
        crashed = None if worker.cancelled() or not worker.done() else worker.exception()
        await asyncio.gather(worker, return_exceptions=True)
        await self._output.close()
        if self._ducker is not None:
            await self._ducker.close()
        await asyncio.gather(*(engine.close() for engine in self._engines.values()))
        await self._link.stop(last_words=(self._topics.availability, OFFLINE))
        watchdog.cancel()
        clock.cancel()
        self._notifier.close()
        if crashed is not None:
            raise RuntimeError("the speaker stopped unexpectedly") from crashed
        LOG.info("stopped")

    async def _watch_clock(self) -> None:
        """The state shows whether the system clock is synchronized (docs/sync.md): read it every minute,
        republished only when it changed."""
        while True:
            await asyncio.sleep(CLOCK_CHECK_INTERVAL)
            self._publish_state()

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
    daemon = Daemon(settings, build_engines(settings), build_output(settings), build_ducker(settings))
    await daemon.run(stop)
