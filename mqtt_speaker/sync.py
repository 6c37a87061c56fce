"""Synchronized starts: when an announcement starts, and where its first sample goes on the device's clock.

Pure functions (and one read-only system call), so that the daemon, the speaker and the player share
one definition of the instant:

- `start_instant`: the wall-clock instant (epoch seconds) a say request starts at, or None for "at once".
- `frames_before_start`: how many frames of silence put the first sample on the DAC at that instant,
  given when the buffer being filled reaches the DAC (PortAudio's outputBufferDacTime).
- `clock_synchronized`: whether the kernel believes the system clock is synchronized (NTP's STA_UNSYNC).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
import sys
from dataclasses import dataclass
from typing import Any

from mqtt_speaker.models import ErrorCode, RequestRejected, SayRequest, Warning_

# struct timex (Linux, 64-bit and 32-bit): `int status` follows `modes` and four longs.
_TIMEX_SIZE = 256  # larger than struct timex on every Linux ABI
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


@dataclass
class StartGate:
    """One announcement's start instant, and how late its first sample reached the DAC.

    The speaker makes it, the player fills `late` (seconds; 0 or less: on time) once the first sample is
    placed. Lives on the event loop only.
    """

    at: float  # wall clock, epoch seconds
    late: float | None = None

    @property
    def late_ms(self) -> int | None:
        """Milliseconds late, never negative (on time, or placed early by a rounding: 0)."""
        return None if self.late is None else max(0, round(self.late * 1000))


def start_instant(
    *, at: float | None, sync: bool | None, broadcast: bool, sent: float | None, arrived: float, lead: float
) -> float | None:
    """When a request starts: its own `at`; else, for a broadcast (all or a group) or `"sync": true`, the
    lead after it was sent (`ts`: the same on every speaker) or, without a `ts` within a lead of its
    arrival (the sender's clock may be off), after it arrived here; None (at once) for `"sync": false`
    and for a plain say to one room."""
    if at is not None:
        return at
    if sync is False or (sync is None and not broadcast):
        return None
    origin = sent if sent is not None and abs(arrived - sent) < lead else arrived
    return origin + lead


def check_at(request: SayRequest, arrived: float, max_ahead: float) -> Warning_ | None:
    """A request's own `at`: refused (RequestRejected) when more than `max_ahead` seconds ahead; a
    warning when already past (it starts as soon as it can; its ttl counts from `at`)."""
    if request.at is None:
        return None
    ahead = request.at - arrived
    if ahead > max_ahead:
        message = f"at: {ahead:.0f} s ahead; at most {max_ahead:.0f} s (sync.max_ahead)"
        raise RequestRejected(message, "at", request.id if request.id_given else None)
    if ahead >= 0:
        return None
    return Warning_(
        code=ErrorCode.START_PASSED,
        field="at",
        message=f"at: {-ahead:.3f} s in the past; it starts as soon as it can (late_ms in started says by how "
        "much), or is dropped as expired once its ttl has run out since then",
    )


def frames_before_start(start: float, dac_time: float, rate: int) -> int:
    """Frames of silence to put before the first sample, when the next frame reaches the DAC at
    `dac_time` (the same clock as `start`), so that the first sample reaches it at `start`. Negative:
    that many frames late (start at once)."""
    return round((start - dac_time) * rate)


@functools.cache
def _adjtimex() -> Any:
    """libc's adjtimex, looked up once (find_library runs ldconfig); None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).adjtimex
    except (OSError, AttributeError):
        return None


def clock_synchronized() -> bool | None:
    """True when the kernel's clock discipline says synchronized (chrony, systemd-timesyncd or ntpd
    clear STA_UNSYNC), False when it says not, None where it cannot tell (not Linux, no adjtimex)."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    buffer = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only
    state = adjtimex(buffer)
    if state < 0:
        return None
    long_size = ctypes.sizeof(ctypes.c_long)
    status_offset = max(4, long_size) + 4 * long_size  # modes (padded to a long), offset, freq, maxerror, esterror
    (status,) = struct.unpack_from("i", buffer.raw, status_offset)
    return not (status & _STA_UNSYNC) and state != _TIME_ERROR
