"""Whether the system clock is synchronized (and how well): what synchronized rooms across machines rely on."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
import sys
from typing import Any

# struct timex (Linux, 64-bit and 32-bit): `int status` follows `modes` and four longs.
_TIMEX_SIZE = 256  # larger than struct timex on every Linux ABI
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


@functools.cache
def _adjtimex() -> Any:
    """libc's adjtimex, looked up once (find_library runs ldconfig); None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).adjtimex
    except (OSError, AttributeError):
        return None


def _timex() -> tuple[int, int, int] | None:
    """(adjtimex's state, the status flags, the estimated error in microseconds), read only; None where
    there is no adjtimex."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    buffer = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only
    state = adjtimex(buffer)
    if state < 0:
        return None
    long_size = ctypes.sizeof(ctypes.c_long)
    fields = max(4, long_size)  # modes (padded to a long), then offset, freq, maxerror, esterror, status
    (esterror,) = struct.unpack_from("l", buffer.raw, fields + 3 * long_size)
    (status,) = struct.unpack_from("i", buffer.raw, fields + 4 * long_size)
    return state, status, esterror


def clock_synchronized() -> bool | None:
    """True when the kernel's clock discipline says synchronized (chrony, systemd-timesyncd or ntpd
    clear STA_UNSYNC), False when it says not, None where it cannot tell (not Linux, no adjtimex)."""
    timex = _timex()
    if timex is None:
        return None
    state, status, _ = timex
    return not (status & _STA_UNSYNC) and state != _TIME_ERROR


def clock_error_ms() -> float | None:
    """The kernel's estimate of the clock's error (esterror, set by the NTP daemon), in milliseconds; None
    where it cannot tell or the clock is not synchronized (the estimate then means nothing)."""
    timex = _timex()
    if timex is None or not clock_synchronized():
        return None
    return round(timex[2] / 1000, 3)
