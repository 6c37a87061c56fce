"""The topic layout. No other module builds a topic string.

<base>/<site>/say            in   say request (QoS 1)
<base>/<site>/say/stream     in   one chunk of a streamed say (QoS 1; docs/streaming.md)
<base>/<site>/stop, skip     in   end what is playing now (any payload)
<base>/<site>/clear          in   drop queued requests (any payload, or {"below": "high", "stop": true})
<base>/<site>/set/volume     in   runtime defaults: set/volume 0-100, set/emotion, set/voice, set/quiet ON/OFF,
                                  set/duck_db 0-40 (how far other audio is lowered while speaking)
<base>/<site>/cache/clear    in   empty the audio cache (any payload)
<base>/<site>/cache/warm     in   JSON list of texts or say requests: synthesize into the cache, not played
<base>/all/...               in   every command above, for every speaker (a say starts in sync, sync.py)
<base>/group/<name>/...      in   every command above, for the members of a group ([sync] groups)
<base>/all/shared/<key>/start  both  a broadcast synthesized once for the house: who, how (retained while it lasts)
<base>/all/shared/<key>/audio  both  its audio, as frames (binary, never retained; protocol/fanout.py)
<base>/+/availability, /state  in   every room's, for the house: who synthesizes a broadcast
<prefix>/device/<site>/config          out  Home Assistant discovery (retained); prefix "homeassistant"
<prefix>/<platform>/<site>/<id>/config out  the same, one topic per entity (for Home Assistant < 2024.11)
<prefix>/status                        in   Home Assistant's birth message: discovery is sent again
<base>/<site>/availability   out  online / offline, retained (offline is the last will)
<base>/<site>/state          out  retained JSON, republished on every change
<base>/<site>/event          out  lifecycle events (queued, started, finished, failed, ...)
<base>/<site>/error          out  every problem, tied to a request or not
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

BROADCAST_SITE = "all"
GROUP_LEVEL = "group"
SHARED_LEVEL = "shared"  # <base>/all/shared/<key>/...: a broadcast's audio, synthesized once for the house
ONLINE, OFFLINE = "online", "offline"  # the availability topic's payloads (offline is the last will)


class Command(StrEnum):
    """What an inbound topic asks for (the topic's last levels)."""

    SAY = "say"
    SAY_STREAM = "say/stream"
    STOP = "stop"
    SKIP = "skip"
    CLEAR = "clear"
    SET_VOLUME = "set/volume"
    SET_EMOTION = "set/emotion"
    SET_VOICE = "set/voice"
    SET_QUIET = "set/quiet"
    SET_DUCK_DB = "set/duck_db"
    CACHE_CLEAR = "cache/clear"
    CACHE_WARM = "cache/warm"


@dataclass(frozen=True)
class Topics:
    base: str
    site: str
    discovery_prefix: str = "homeassistant"
    groups: tuple[str, ...] = ()

    def _own(self, leaf: str) -> str:
        return f"{self.base}/{self.site}/{leaf}"

    @property
    def availability(self) -> str:
        return self._own("availability")

    @property
    def state(self) -> str:
        return self._own("state")

    @property
    def event(self) -> str:
        return self._own("event")

    @property
    def error(self) -> str:
        return self._own("error")

    def command(self, command: Command, site: str | None = None) -> str:
        """The topic a command is published on, for this site or another one (or 'all')."""
        return f"{self.base}/{site or self.site}/{command.value}"

    def group_command(self, command: Command, group: str) -> str:
        """The topic a command is published on for every member of a group."""
        return f"{self.base}/{GROUP_LEVEL}/{group}/{command.value}"

    def _prefixes(self) -> list[str]:
        """Where our commands live: this site's own, 'all', then each of our groups (broadcasts)."""
        own = [f"{self.base}/{site}/" for site in (self.site, BROADCAST_SITE)]
        return [*own, *(f"{self.base}/{GROUP_LEVEL}/{group}/" for group in self.groups)]

    @property
    def discovery(self) -> str:
        return f"{self.discovery_prefix}/device/{self.site}/config"

    def entity_discovery(self, platform: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{platform}/{self.site}/{object_id}/config"

    @property
    def homeassistant_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def command_subscriptions(self) -> list[str]:
        """Every command topic of this speaker: its own, 'all' and its groups' (re-subscribed on each connect)."""
        return [prefix + command.value for command in Command for prefix in self._prefixes()]

    def parse_command(self, topic: str) -> Command | None:
        """The command an inbound topic carries, or None when it is not one of ours."""
        for prefix in self._prefixes():
            if topic.startswith(prefix):
                try:
                    return Command(topic.removeprefix(prefix))
                except ValueError:
                    return None
        return None

    def is_broadcast(self, topic: str) -> bool:
        """The topic reaches more than this speaker: 'all' or one of our groups."""
        return self.scope(topic) is not None

    def scope(self, topic: str) -> str | None:
        """A broadcast topic's scope, 'all' or 'group/<name>'; None for this speaker's own topics."""
        for prefix in self._prefixes()[1:]:  # 'all', then the groups
            if topic.startswith(prefix) and self.parse_command(topic) is not None:
                return prefix.removeprefix(f"{self.base}/").removesuffix("/")
        return None

    # The house: every room's retained availability and state, and the shared audio of broadcasts.

    @property
    def house(self) -> list[str]:
        """Every room's availability and state (retained): who is there, its engine, its groups."""
        return [f"{self.base}/+/availability", f"{self.base}/+/state"]

    def room_of(self, topic: str) -> tuple[str, str] | None:
        """(site, 'availability' or 'state') of a room's topic, or None."""
        parts = topic.split("/")
        if len(parts) == 3 and parts[0] == self.base and parts[2] in ("availability", "state"):
            return parts[1], parts[2]
        return None

    @property
    def shared(self) -> str:
        """Every broadcast's shared audio: <base>/all/shared/<key>/start (retained while it lasts) and
        <base>/all/shared/<key>/audio (frames, never retained)."""
        return f"{self.base}/{BROADCAST_SITE}/{SHARED_LEVEL}/#"

    def shared_topic(self, key: str, kind: str) -> str:
        return f"{self.base}/{BROADCAST_SITE}/{SHARED_LEVEL}/{key}/{kind}"

    def parse_shared(self, topic: str) -> tuple[str, str] | None:
        """(key, 'start' or 'audio') of a shared-audio topic, or None."""
        prefix = f"{self.base}/{BROADCAST_SITE}/{SHARED_LEVEL}/"
        parts = topic.removeprefix(prefix).split("/") if topic.startswith(prefix) else []
        if len(parts) == 2 and parts[1] in ("start", "audio") and parts[0]:
            return parts[0], parts[1]
        return None
