"""The daemon: wiring only. It builds the MQTT link, the speaker (with its engines and output) and the
protocol adapters, hands the speaker's events, errors and state to every adapter and every inbound
message to the adapter whose topic it is, and starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import signal

from mqtt_speaker.core.broadcast import Broadcaster
from mqtt_speaker.core.cache import AudioCache
from mqtt_speaker.core.shared import SHARED_ENGINE, SharedHub, SharedSource
from mqtt_speaker.core.speaker import Speaker
from mqtt_speaker.engines.base import Engine
from mqtt_speaker.engines.registry import build_engines
from mqtt_speaker.playback.devices import build_output
from mqtt_speaker.playback.ducking import Ducker, record_path
from mqtt_speaker.playback.output import Output
from mqtt_speaker.protocol.adapter import Adapter
from mqtt_speaker.protocol.fanout import House
from mqtt_speaker.protocol.homeassistant import HomeAssistantDiscovery
from mqtt_speaker.protocol.link import Inbound, MqttLink, Will
from mqtt_speaker.protocol.native import NativeTopics
from mqtt_speaker.protocol.topics import OFFLINE, Command, Topics
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import ErrorCode, ErrorReport, Event
from mqtt_speaker.systemd import Notifier

LOG = logging.getLogger(__name__)
CLOCK_CHECK_INTERVAL = 60.0  # seconds


def build_ducker(settings: Settings) -> Ducker | None:
    """The ducker when we play to a sound device (not when writing WAV files)."""
    return None if settings.audio.output_dir is not None else Ducker(record_path(settings.state_file))


class Daemon:
    """Also the speaker's Listener: what the speaker says goes to every adapter."""

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
        self._notifier = Notifier()
        cache = AudioCache(settings.cache)
        hub = SharedHub()  # broadcasts synthesized once for the house, as this room receives them
        own = dict(engines)
        voices = {**own, SHARED_ENGINE: SharedSource(hub, cache)} if settings.sync.share else own
        self.speaker = Speaker(
            voices, output, settings, self, primary=settings.primary_engine, cache=cache, ducker=ducker
        )
        self.link = MqttLink(
            settings.mqtt,
            settings.client_id,
            Will(self._topics.availability, OFFLINE),
            on_message=self._on_message,
            on_connected=self._announce,
            on_problem=self._notifier.status,
            on_dropped=lambda message: self.on_error(ErrorReport(code=ErrorCode.MESSAGES_DROPPED, message=message)),
        )
        broadcaster = Broadcaster(
            own,
            settings,
            defaults=self.speaker.defaults,
            listener=self,
            problems=self.speaker.problems,
            guard=self.speaker.guard,
            primary=settings.primary_engine,
            cache=cache,
        )
        house = House(settings, self._topics, self.speaker, self.link, hub, broadcaster, self.on_error)
        self.adapters: list[Adapter] = [
            NativeTopics(settings, self._topics, self.speaker, self.link, house),
            house,
            HomeAssistantDiscovery(settings, self._topics, self.speaker.defaults, self.link, self._announce),
        ]
        self.link.subscribe([topic for adapter in self.adapters for topic in adapter.subscriptions()])

    # ------------------------------------------------------------------- the speaker's Listener

    def on_event(self, event: Event) -> None:
        for adapter in self.adapters:
            adapter.on_event(event)

    def on_error(self, error: ErrorReport) -> None:
        for adapter in self.adapters:
            adapter.on_error(error)

    def on_change(self) -> None:
        state = self.speaker.state()
        for adapter in self.adapters:
            adapter.on_state(state)

    # ------------------------------------------------------------------------------ the link

    def _announce(self) -> None:
        """Connected (or Home Assistant asked): every adapter publishes what must be on the broker."""
        for adapter in self.adapters:
            adapter.on_connected()
        self._notifier.status(f"speaking for {self._topics.command(Command.SAY)} ({self.speaker.engine_in_use()})")

    def _on_message(self, message: Inbound) -> None:
        for adapter in self.adapters:
            if adapter.on_message(message):
                return

    # ------------------------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down cleanly: every request ends, `offline` is published."""
        LOG.info(
            "mqtt-speaker for site %r on %s:%d, engine %s",
            self._settings.site,
            self._settings.mqtt.host,
            self._settings.mqtt.port,
            self.speaker.engine_in_use(),
        )
        self.link.start()
        if self._ducker is not None:
            self._ducker.start()  # restores what a previous run left lowered
        # Ready at once, broker or not (a broker down at boot must not hold up the boot); STATUS says why.
        self._notifier.ready(f"waiting for the broker at {self._settings.mqtt.host}:{self._settings.mqtt.port}")
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        clock = asyncio.create_task(self._watch_clock(), name="clock")
        await asyncio.gather(*(engine.start() for engine in self._engines.values()))
        await asyncio.gather(*(adapter.start() for adapter in self.adapters))
        worker = asyncio.create_task(self.speaker.run(), name="speaker")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        self._notifier.stopping()
        await asyncio.gather(*(adapter.stop() for adapter in self.adapters))
        await self.speaker.shutdown(grace=1.5)
        worker.cancel()  # cache warming too: it must not reopen a socket being closed
        crashed = None if worker.cancelled() or not worker.done() else worker.exception()
        await asyncio.gather(worker, return_exceptions=True)
        await self._output.close()
        if self._ducker is not None:
            await self._ducker.close()
        await asyncio.gather(*(engine.close() for engine in self._engines.values()))
        await self.link.stop(last_words=(self._topics.availability, OFFLINE))
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
            self.on_change()

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
    daemon = Daemon(settings, build_engines(settings), build_output(settings.audio), build_ducker(settings))
    await daemon.run(stop)
