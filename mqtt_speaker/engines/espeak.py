"""espeak-ng, the local engine: raw PCM streamed from a subprocess, emotion mapped onto rate, pitch and volume."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np

from mqtt_speaker.engines.base import PcmAssembler, SynthesisError, Voicing
from mqtt_speaker.settings import EspeakSettings
from mqtt_speaker.speech.audio import AudioChunk, Pcm
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import ErrorCode, Segment

LOG = logging.getLogger(__name__)
READ_SIZE = 4096
EMPTY: Pcm = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True)
class Prosody:
    rate: float  # times the configured words per minute
    pitch: int  # espeak-ng 0-99, 50 is normal
    amplitude: int  # espeak-ng 0-200, 100 is normal


NEUTRAL = Prosody(1.0, 50, 100)
_GROUPS: dict[Prosody, list[str]] = {
    Prosody(1.12, 68, 115): (
        "happy excited enthusiastic elated euphoric triumphant amazed surprised flirtatious "
        "proud confident anticipation grateful affectionate".split()
    ),
    Prosody(1.08, 38, 150): "angry mad outraged frustrated agitated threatened disgusted contempt determined".split(),
    Prosody(0.85, 35, 80): (
        "sad dejected melancholic disappointed hurt guilty bored tired rejected resigned wistful nostalgic "
        "apologetic".split()
    ),
    Prosody(1.2, 72, 105): "anxious panicked alarmed scared insecure hesitant confused".split(),
    Prosody(0.92, 45, 90): "calm peaceful serene content contemplative distant mysterious trust sympathetic".split(),
    Prosody(1.0, 55, 100): "curious skeptical sarcastic ironic envious".split(),
}
PROSODY: dict[str, Prosody] = {emotion: prosody for prosody, names in _GROUPS.items() for emotion in names}


def prosody_for(segment: Segment, voicing: Voicing) -> Prosody:
    """Emotion picks the prosody; speed scales the rate and generation volume the amplitude."""
    base = PROSODY.get(segment.emotion or voicing.emotion, NEUTRAL)
    speed = segment.speed if segment.speed is not None else 1.0
    volume = segment.volume if segment.volume is not None else 1.0
    return Prosody(base.rate * speed, base.pitch, min(200, round(base.amplitude * volume)))


class EspeakEngine:
    name = "espeak"
    billed = False
    emotion_applied = True  # approximated with rate, pitch and amplitude

    def __init__(self, settings: EspeakSettings) -> None:
        self._settings = settings

    @property
    def identity(self) -> str:
        return f"espeak:{self._settings.voice}:{self._settings.words_per_minute}"

    def problem(self) -> SynthesisError | None:
        return None

    async def start(self) -> None:
        """Nothing to warm up: espeak-ng starts in a few milliseconds."""

    async def close(self) -> None:
        """Nothing held between requests."""

    async def synthesize(self, script: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        """Piece by piece (a whole segment of a plain say, a sentence of a stream as it arrives)."""
        voice = self._settings.voice or script.request.language or voicing.language
        async for piece in script.pieces():
            if piece.text.strip():
                async for chunk in self._piece(piece.text, piece.segment, voice, prosody_for(piece.voice, voicing)):
                    yield chunk
                yield AudioChunk(EMPTY, 22050, piece.segment, spoken=piece.offset + len(piece.text))

    async def _piece(self, text: str, index: int, voice: str, prosody: Prosody) -> AsyncGenerator[AudioChunk, None]:
        args = [
            "--stdout",
            "-v",
            voice,
            "-s",
            str(round(self._settings.words_per_minute * prosody.rate)),
            "-p",
            str(prosody.pitch),
            "-a",
            str(prosody.amplitude),
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                self._settings.executable,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SynthesisError(
                ErrorCode.ENGINE_UNAVAILABLE, f"cannot run {self._settings.executable}: {exc.strerror or exc}"
            ) from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(text.encode("utf-8"))
            proc.stdin.close()
            rate = await _read_wav_header(proc.stdout)
            pcm = PcmAssembler()
            while data := await proc.stdout.read(READ_SIZE):
                samples = pcm.feed(data)
                if samples.size:
                    yield AudioChunk(samples=samples, sample_rate=rate, segment=index)
            stderr = (await proc.stderr.read()).decode("utf-8", "replace").strip()
            if await proc.wait() != 0:
                raise SynthesisError(ErrorCode.SYNTHESIS_FAILED, f"espeak-ng failed ({proc.returncode}): {stderr}")
        except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError) as exc:
            raise SynthesisError(ErrorCode.SYNTHESIS_FAILED, f"espeak-ng produced no audio: {exc}") from exc
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _read_wav_header(stream: asyncio.StreamReader) -> int:
    """Skip the streaming WAV header (its sizes are placeholders) and return the sample rate."""
    riff = await stream.readexactly(12)
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise SynthesisError(ErrorCode.SYNTHESIS_FAILED, "espeak-ng did not write a WAV stream")
    rate = 22050
    while True:
        chunk_id, size = struct.unpack("<4sI", await stream.readexactly(8))
        if chunk_id == b"data":
            return rate
        body = await stream.readexactly(size)
        if chunk_id == b"fmt ":
            channels, rate = struct.unpack("<HI", body[2:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if channels != 1 or bits != 16:
                raise SynthesisError(ErrorCode.SYNTHESIS_FAILED, f"espeak-ng wrote {channels} ch / {bits} bit")
