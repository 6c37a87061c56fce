"""The audio cache: synthesized speech kept on disk, so a repeat costs no credits and starts at once.

Keyed by every input that changes the sound (engine and its model, voice, language, each segment's
text, emotion, speed and volume, sample rate). Least recently used entries are evicted past the size
limit. A file that is corrupt or truncated is discarded, with a log line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import numpy as np

from mqtt_speaker.engines.base import Voicing
from mqtt_speaker.files import write_atomically
from mqtt_speaker.settings import CacheSettings
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.vocabulary import SayRequest

LOG = logging.getLogger(__name__)
MAGIC = b"mqtt-speaker-audio-1\n"
SUFFIX = ".pcm"
TMP_PREFIX = ".tmp-"
STALE_TMP = 3600.0  # seconds: a temporary file older than this was left by a crash


def cache_key(engine_identity: str, request: SayRequest, voicing: Voicing, sample_rate: int) -> str:
    inputs = {
        "engine": engine_identity,
        "voice": voicing.voice,
        "language": voicing.language,
        "rate": sample_rate,
        "segments": [[s.text, s.emotion or voicing.emotion, s.speed, s.volume] for s in request.segments],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


class AudioCache:
    def __init__(self, settings: CacheSettings) -> None:
        self._dir = settings.dir
        self._limit = int(settings.max_mb * 1024 * 1024)
        self.enabled = settings.enabled

    def _path(self, key: str) -> Path:
        return self._dir / f"{key}{SUFFIX}"

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> list[AudioChunk] | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            chunks = _decode(data)
        except (ValueError, KeyError, TypeError) as exc:
            LOG.warning("discarding the corrupt cache entry %s: %s", path.name, exc)
            with contextlib.suppress(OSError):  # a read-only disk: it stays, and is discarded again next time
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # evicted meanwhile, or a read-only disk: the audio is in hand
            os.utime(path)  # most recently used
        return chunks

    def put(self, key: str, chunks: list[AudioChunk]) -> None:
        if not chunks:
            return
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path(key), _encode(chunks), prefix=TMP_PREFIX)
        except OSError as exc:
            LOG.warning("cannot write to the audio cache %s: %s", self._dir, exc)
            return
        self._evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        entries = []
        for path in self._dir.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        return sorted(entries)

    def _evict(self) -> None:
        for leftover in self._dir.glob(f"{TMP_PREFIX}*"):  # from a crash mid-write: no write takes an hour
            with contextlib.suppress(OSError):
                if time.time() - leftover.stat().st_mtime > STALE_TMP:
                    leftover.unlink()
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self._limit:
                break
            path.unlink(missing_ok=True)
            total -= size
            LOG.debug("evicted %s from the audio cache", path.name)

    def clear(self) -> int:
        """Remove every entry, and any temporary file a crash left behind (blocking: call it in a thread)."""
        entries = self._entries()
        for _, _, path in entries:
            path.unlink(missing_ok=True)
        for leftover in self._dir.glob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        return len(entries)


def _encode(chunks: list[AudioChunk]) -> bytes:
    """One part per run of chunks of the same segment and rate: a hit replays as a few large chunks,
    not as the engine's many small ones (each costs the event loop a turn)."""
    data = b"".join(c.samples.astype("<i2").tobytes() for c in chunks)
    parts: list[list[int]] = []
    for c in chunks:
        if parts and parts[-1][0] == c.segment and parts[-1][2] == c.sample_rate:
            parts[-1][1] += c.samples.size
        else:
            parts.append([c.segment, c.samples.size, c.sample_rate])
    header = {
        "rate": chunks[0].sample_rate,
        "parts": parts,
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": time.time(),
    }
    return MAGIC + json.dumps(header).encode() + b"\n" + data


def _decode(blob: bytes) -> list[AudioChunk]:
    if not blob.startswith(MAGIC):
        raise ValueError("not a cache file")
    header_line, _, data = blob[len(MAGIC) :].partition(b"\n")
    header = json.loads(header_line)
    if hashlib.sha256(data).hexdigest() != header["sha256"]:
        raise ValueError("checksum mismatch (truncated or damaged)")
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    chunks, offset = [], 0
    for segment, count, rate in header["parts"]:
        chunks.append(AudioChunk(samples=samples[offset : offset + count], sample_rate=int(rate), segment=int(segment)))
        offset += count
    if offset != samples.size:
        raise ValueError("sizes do not add up")
    return chunks


async def replay(chunks: list[AudioChunk]) -> AsyncGenerator[AudioChunk, None]:
    for chunk in chunks:
        yield chunk


async def recording(
    source: AsyncGenerator[AudioChunk, None], on_complete: Callable[[list[AudioChunk]], None]
) -> AsyncGenerator[AudioChunk, None]:
    """Pass chunks through; hand them all to `on_complete` only if the source ran to its end."""
    kept: list[AudioChunk] = []
    try:
        async for chunk in source:
            kept.append(chunk)
            yield chunk
    finally:
        await source.aclose()
    on_complete(kept)
