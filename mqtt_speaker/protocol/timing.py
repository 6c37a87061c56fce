"""When a synchronized request starts: its own `at`, or a broadcast's arrival (or `ts`) plus the lead
(docs/sync.md). The instant travels with the request to the player, which places the first sample there
(playback/output.py's StartGate); only how late it was comes back."""

from __future__ import annotations

import time
from collections.abc import Callable

from mqtt_speaker.clock import clock_synchronized
from mqtt_speaker.protocol.payloads import RequestRejected
from mqtt_speaker.speech.vocabulary import ErrorCode, SayRequest, Warning_


def start_instant(  # noqa: PLR0913 - every input of the instant, keyword-only
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


CLOCK_WARNING_EVERY = 3600.0  # seconds: an unsynchronized clock is said once an hour, not on every broadcast


class ClockWatch:
    """A warning when a synchronized request is placed on a clock the kernel says is not synchronized (no
    NTP): across machines its shared instant is then only as good as that clock. At most once an hour."""

    def __init__(self, synchronized: Callable[[], bool | None] = clock_synchronized) -> None:
        self._synchronized = synchronized
        self._said: float | None = None

    def check(self, instant: float | None) -> Warning_ | None:
        if instant is None or self._synchronized() is not False:
            return None
        now = time.monotonic()
        if self._said is not None and now - self._said < CLOCK_WARNING_EVERY:
            return None
        self._said = now
        return Warning_(
            code=ErrorCode.CLOCK_UNSYNCHRONIZED,
            field="at",
            message="at: this speaker's clock is not synchronized (no NTP), so its shared start may be off from "
            "the other rooms' by the clock's own error; run chrony or systemd-timesyncd (docs/sync.md). "
            "Said once an hour",
        )
