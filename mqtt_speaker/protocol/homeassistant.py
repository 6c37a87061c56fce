"""Home Assistant MQTT discovery: the speaker's entities (discovery.py builds them), published retained,
sent again after Home Assistant's birth message, and cleared when no longer produced (a switch between
the device-based and the per-entity form, say: what was published is remembered in the state file)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from mqtt_speaker.core.defaults import Defaults
from mqtt_speaker.protocol.adapter import BaseAdapter
from mqtt_speaker.protocol.discovery import discovery_messages
from mqtt_speaker.protocol.link import Inbound, MqttLink
from mqtt_speaker.protocol.topics import Topics
from mqtt_speaker.settings import Settings

LOG = logging.getLogger(__name__)
BIRTH_DELAY = (0.5, 3.0)  # seconds: the resend after Home Assistant's birth waits a random time in this span


class HomeAssistantDiscovery(BaseAdapter):
    """Publishes discovery; answers `<prefix>/status`. Stopped, it schedules and publishes nothing."""

    def __init__(
        self, settings: Settings, topics: Topics, defaults: Defaults, link: MqttLink, announce: Callable[[], None]
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._defaults = defaults  # where what was published is remembered
        self._link = link
        self._announce = announce  # every adapter announces again (availability, state, discovery)
        self._resend: asyncio.TimerHandle | None = None
        self._stopped = False

    def subscriptions(self) -> list[str]:
        return [self._topics.homeassistant_status]

    def on_connected(self) -> None:
        """Every discovery config (retained); the ones remembered but no longer produced are cleared."""
        if self._stopped:
            return
        messages = discovery_messages(self._settings, self._topics)
        remembered = self._defaults.discovery
        for topic in sorted(set(remembered) - {topic for topic, _ in messages}):  # the other form's, say
            self._link.publish(topic, "", retain=True)
        for topic, payload in messages:
            self._link.publish(topic, payload, retain=True)
        published = sorted(topic for topic, payload in messages if payload)
        if published != remembered:
            self._defaults.remember_discovery(published)

    def on_message(self, message: Inbound) -> bool:
        """Home Assistant (re)started: announce again, after a short random delay (as it advises, so that a
        house full of devices does not answer all at once). False when the topic is not its status."""
        if message.topic != self._topics.homeassistant_status:
            return False
        if message.payload.strip().lower() == b"online" and not self._stopped:
            delay = random.uniform(*BIRTH_DELAY)
            LOG.info("Home Assistant is online: sending discovery again in %.1f s", delay)
            if self._resend is not None:
                self._resend.cancel()
            self._resend = asyncio.get_running_loop().call_later(delay, self._announce)
        return True

    async def stop(self) -> None:
        """Shutting down: the resend is cancelled (it would say `online` after `offline`)."""
        self._stopped = True
        if self._resend is not None:
            self._resend.cancel()
