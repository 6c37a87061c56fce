"""What every speech engine offers: a stream of PCM chunks for a script (a request's text, which may
still be arriving), or a SynthesisError."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mqtt_speaker.speech.audio import AudioChunk, Pcm
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import ErrorCode


@dataclass(frozen=True)
class Voicing:
    """The defaults a request is spoken with where it does not say otherwise."""

    emotion: str
    voice: str
    language: str


class SynthesisError(Exception):
    """Speech could not be produced. `retryable`: a fresh attempt may succeed at once. `spoken_chars`:
    after audio, how many characters of the segment it stopped in were spoken whole (the next engine
    goes on from there; 0 when not known). `segment`: the segment spoken_chars counts in, when it is not
    the one last heard (a refusal before a new segment's first piece). `request_only`: the engine
    refused this request's own settings (an unknown voice) and works for others: not an outage."""

    def __init__(  # noqa: PLR0913 - what a failure says (keyword-only)
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool = False,
        spoken_chars: int = 0,
        segment: int | None = None,
        request_only: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.spoken_chars = spoken_chars
        self.segment = segment
        self.request_only = request_only


class Engine(Protocol):
    name: str
    billed: bool  # each character synthesized costs money (the cost guard counts them)
    emotion_applied: bool  # the engine does something with the emotion (Piper does not)

    @property
    def identity(self) -> str:
        """The engine and whatever of its configuration changes the sound (part of the cache key)."""
        ...

    def problem(self) -> SynthesisError | None:
        """Why it is known to be failing now (requests then go straight to a fallback), or None."""
        ...

    async def start(self) -> None:
        """Get ready to speak (open connections); failures are logged, not raised."""

    async def close(self) -> None:
        """Release connections and processes."""

    def synthesize(self, script: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        """Audio for the script's pieces in order, as the text arrives and the audio is produced (each
        chunk tagged with its run, `segment`). Close the iterator to abandon it."""
        ...


class PcmAssembler:
    """Turns a byte stream into whole 16-bit samples, carrying an odd byte over to the next read."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> Pcm:
        if not self._carry and not len(data) % 2:  # the usual case: nothing carried, nothing to carry
            return np.frombuffer(data, dtype="<i2")
        data = self._carry + data
        whole = len(data) - len(data) % 2
        self._carry = data[whole:]
        return np.frombuffer(data[:whole], dtype="<i2").astype(np.int16, copy=False)
