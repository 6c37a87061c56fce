"""Audio as every part of the speaker passes it on: mono signed 16-bit samples, in chunks tagged with the
segment of the request they speak (the chime is segment CHIME_SEGMENT)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]
CHIME_SEGMENT = -1  # the chime's chunks: played before the speech, not speech themselves


@dataclass(frozen=True)
class AudioChunk:
    """Mono signed 16-bit samples of one segment (run) of a request, in order."""

    samples: Pcm
    sample_rate: int
    segment: int
    spoken: int | None = None  # characters of the segment whose audio is complete at this chunk's end, when known

    @property
    def is_speech(self) -> bool:
        return self.segment != CHIME_SEGMENT
