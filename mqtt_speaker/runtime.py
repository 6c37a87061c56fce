"""Runtime defaults set over MQTT (set/volume, set/emotion, set/voice, set/quiet, set/duck_db), kept in a small
state file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from mqtt_speaker.files import write_atomically
from mqtt_speaker.settings import Settings

LOG = logging.getLogger(__name__)


class RuntimeDefaults(BaseModel):
    volume: int = Field(ge=0, le=100)
    emotion: str
    voice: str
    quiet: bool = False
    discovery: list[str] = Field(
        default_factory=list, description="Discovery topics last published with a config: cleared once not produced"
    )
    duck_db: float = Field(default=0.0, ge=0, le=40)

    @classmethod
    def load(cls, settings: Settings) -> RuntimeDefaults:
        """The saved defaults, or the configured ones when nothing (usable) was saved."""
        configured = cls(
            volume=settings.default_volume,
            emotion=settings.default_emotion,
            voice=settings.cartesia.voice,
            duck_db=settings.audio.duck_db,
        )
        path = settings.state_file
        try:  # what was saved, over the configured defaults (a file from an older version lacks newer fields)
            return cls.model_validate({**configured.model_dump(), **json.loads(path.read_bytes())})
        except FileNotFoundError:
            return configured
        except (OSError, ValidationError, ValueError, TypeError) as exc:
            LOG.warning("ignoring the state file %s: %s", path, str(exc).splitlines()[0])
            return configured

    def save(self, path: Path) -> None:
        """Write atomically (a temporary file renamed over the old one); a failure is logged, not raised."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, self.model_dump_json().encode(), prefix=".state-")
        except OSError as exc:
            LOG.warning("cannot save the runtime defaults to %s: %s", path, exc)
