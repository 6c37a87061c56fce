"""Browsing for the daemon's ESPHome advertisement with python-zeroconf, on the loopback interface only
(nothing goes out on the machine's network)."""

from __future__ import annotations

import asyncio
from typing import Any

from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE = "_esphomelib._tcp.local."


async def find(prefix: str, wait: float = 20) -> AsyncServiceInfo:
    """The advertised service whose instance name starts with `prefix`, with its addresses and records."""
    found: asyncio.Queue[str] = asyncio.Queue()

    # zeroconf calls its handlers with these keyword arguments: the names are its own.
    def seen(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if name.startswith(prefix) and state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    browser_zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    browser = AsyncServiceBrowser(browser_zc.zeroconf, SERVICE, handlers=[seen])
    try:
        instance = await asyncio.wait_for(found.get(), wait)
        info = AsyncServiceInfo(SERVICE, instance)
        if not await info.async_request(browser_zc.zeroconf, 5000):
            raise TimeoutError(f"{instance} did not answer with its records")
        return info
    finally:
        await browser.async_cancel()
        await browser_zc.async_close()


def records(info: AsyncServiceInfo) -> dict[str, str]:
    return {key.decode(): (value or b"").decode() for key, value in info.properties.items()}
