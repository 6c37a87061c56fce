"""Runtime defaults: the configured ones (settings), over which what a `set/...` command changed stands
(set/volume, set/mute, set/emotion, set/voice, set/quiet, set/duck_db; the ESPHome media player's volume and mute
are the same values). Only what was set is kept in the state
file, so a changed setting takes effect at the next start unless a command has set that value since.

The state file also keeps what Home Assistant discovery last published (so that it can clear what it no
longer produces)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mqtt_speaker.files import write_atomically
from mqtt_speaker.settings import DEFAULT_VOICE, AudioSettings, Settings

LOG = logging.getLogger(__name__)


class RuntimeDefaults(BaseModel):
    """What a request is spoken with where it does not say otherwise, and quiet mode."""

    volume: int = Field(ge=0, le=100)
    muted: bool = False
    emotion: str
    voice: str
    quiet: bool = False
    duck_db: float = Field(default=0.0, ge=0, le=40)


class _Overrides(BaseModel):
    """Each field: a value a `set/...` command gave (None: the configured one stands)."""

    volume: int | None = Field(default=None, ge=0, le=100)
    muted: bool | None = None
    emotion: str | None = None
    voice: str | None = None
    quiet: bool | None = None
    duck_db: float | None = Field(default=None, ge=0, le=40)


class _StateFile(BaseModel):
    set: _Overrides = Field(default_factory=_Overrides)
    discovery: list[str] = Field(
        default_factory=list, description="Discovery topics last published with a config: cleared once not produced"
    )


def configured(settings: Settings) -> RuntimeDefaults:
    return RuntimeDefaults(
        volume=settings.default_volume,
        emotion=settings.default_emotion,
        voice=settings.cartesia.voice,
        duck_db=settings.audio.duck_db,
    )


class Defaults:
    """The runtime defaults (event loop only): the configured ones with what was set over them; saved to
    the state file in a worker thread, one write at a time, the latest last."""

    def __init__(self, settings: Settings) -> None:
        self._path = settings.state_file
        self._configured = configured(settings)
        state = _load(self._path)
        self._set = state.set
        self.current = self._merged()  # read for every chunk played (the volume): kept, not made each time
        self.discovery = state.discovery
        self._saving: asyncio.Future[None] | None = None
        self._save_again = False

    def _merged(self) -> RuntimeDefaults:
        changed = self._set.model_dump(exclude_none=True)
        return self._configured.model_copy(update=changed)

    def set(self, **changes: Any) -> None:
        """What a `set/...` command changed (validated by the caller): it stands over the configuration."""
        self._set = self._set.model_copy(update=changes)
        self.current = self._merged()
        self._save()

    def remember_discovery(self, topics: list[str]) -> None:
        self.discovery = topics
        self._save()

    def _save(self) -> None:
        if self._saving is None or self._saving.done():
            self._saving = asyncio.ensure_future(self._save_latest())
        else:
            self._save_again = True

    async def _save_latest(self) -> None:
        while True:
            self._save_again = False
            state = _StateFile(set=self._set, discovery=self.discovery)
            await asyncio.to_thread(_write, self._path, state)
            if not self._save_again:
                return

    async def saved(self) -> None:
        """The last write, finished (at shutdown)."""
        if self._saving is not None:
            await asyncio.shield(self._saving)


def _load(path: Path) -> _StateFile:
    """What was saved; nothing (the configuration stands) when there is no usable file."""
    try:
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and "set" not in data:  # written before 0.2: every default, set or not
            data = _from_before(data)
        return _StateFile.model_validate(data)
    except FileNotFoundError:
        return _StateFile()
    except (OSError, ValidationError, ValueError, TypeError) as exc:
        LOG.warning("ignoring the state file %s: %s", path, str(exc).splitlines()[0])
        return _StateFile()


def _from_before(old: dict[str, Any]) -> dict[str, Any]:
    """A state file of an earlier version held every runtime default, set by a command or not (it was
    written whole at the first connection). A value other than the built-in default was chosen by
    someone, so it stands; one equal to it is dropped, so that the configuration takes effect."""
    builtin = {"volume": 100, "emotion": "neutral", "voice": DEFAULT_VOICE, "duck_db": AudioSettings().duck_db}
    kept = {key: value for key, value in old.items() if key in builtin and value != builtin[key]}
    if old.get("quiet"):
        kept["quiet"] = True
    return {"set": kept, "discovery": old.get("discovery", [])}


def _write(path: Path, state: _StateFile) -> None:
    """Atomically (a temporary file renamed over the old one); a failure is logged, not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, state.model_dump_json(exclude_defaults=False).encode(), prefix=".state-")
    except OSError as exc:
        LOG.warning("cannot save the runtime defaults to %s: %s", path, exc)
