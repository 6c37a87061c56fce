"""Home Assistant MQTT discovery: the speaker's entities (discovery.py builds them), published retained,
sent again after Home Assistant's birth message, and cleared when no longer produced (a switch between
the device-based and the per-entity form, say: what was published is remembered in the state file)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from mqtt_speaker.discovery import discovery_messages
from mqtt_speaker.settings import Settings
from mqtt_speaker.speaker import Speaker
from mqtt_speaker.topics import Topics

LOG = logging.getLogger(__name__)
BIRTH_DELAY = (0.5, 3.0)  # seconds: the resend after Home Assistant's birth waits a random time in this span


class HomeAssistantDiscovery:
    """Publishes discovery; answers `<prefix>/status`. Stopped, it schedules and publishes nothing."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        speaker: Speaker,
        *,
        publish: Callable[[str, str], None],
        on_birth: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._speaker = speaker
        self._publish = publish  # retained
        self._on_birth = on_birth  # announce availability, state and discovery again
        self._resend: asyncio.TimerHandle | None = None
        self._stopped = False

    def publish(self) -> None:
        """Every discovery config (retained); the ones remembered but no longer produced are cleared."""
        if self._stopped:
            return
        messages = discovery_messages(self._settings, self._topics)
        remembered = self._speaker.defaults.discovery
        for topic in sorted(set(remembered) - {topic for topic, _ in messages}):  # the other form's, say
            self._publish(topic, "")
        for topic, payload in messages:
            self._publish(topic, payload)
        published = sorted(topic for topic, payload in messages if payload)
        if published != remembered:
            self._speaker.update_defaults(discovery=published)

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Home Assistant (re)started: announce again, after a short random delay (as it advises, so that a
        house full of devices does not answer all at once). False when the topic is not its status."""
        if topic != self._topics.homeassistant_status:
            return False
        if payload.strip().lower() == b"online" and not self._stopped:
            delay = random.uniform(*BIRTH_DELAY)
            LOG.info("Home Assistant is online: sending discovery again in %.1f s", delay)
            if self._resend is not None:
                self._resend.cancel()
            self._resend = asyncio.get_running_loop().call_later(delay, self._on_birth)
        return True

    def stop(self) -> None:
        """Shutting down: the resend is cancelled (it would say `online` after `offline`)."""
        self._stopped = True
        if self._resend is not None:
            self._resend.cancel()
