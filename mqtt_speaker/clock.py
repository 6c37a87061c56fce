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
