"""The one way a future is settled: once, from the event loop or (threadsafe) from another thread."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar

_T = TypeVar("_T")


def settle(future: asyncio.Future[_T], result: _T | None = None, error: BaseException | None = None) -> None:
    """Give the future its result (or `error`), unless it already has one (or was cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def settle_threadsafe(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    """`settle`, called from another thread (an audio callback, a worker): on the loop, unless it has closed."""
    with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
        loop.call_soon_threadsafe(settle, future, result, error)
