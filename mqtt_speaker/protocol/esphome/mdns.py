"""The ESPHome API's mDNS advertisement (python-zeroconf): `<name>._esphomelib._tcp.local.`, the records
Home Assistant's zeroconf discovery reads (`mac`, `friendly_name`, `api_encryption` when a key is set) and
those ESPHome's firmware sends beside them. Home Assistant then offers the device by itself.

It is sent on the interfaces the API listens on: all of them for 0.0.0.0 (the machine's own addresses,
loopback left out), or the one address `esphome.host` names. Registering runs in the background and a
failure is only logged: the API works without it (a device is added by its address too).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import Any

from mqtt_speaker import __version__
from mqtt_speaker.protocol.esphome.frames import NOISE_PROTOCOL
from mqtt_speaker.protocol.esphome.identity import Identity

LOG = logging.getLogger(__name__)
SERVICE = "_esphomelib._tcp.local."
ANY = ("", "0.0.0.0", "::")  # the addresses that mean every interface


def advertised_addresses(host: str) -> list[str]:
    """The IPv4 address to advertise: the one listened on, or for every interface the one the machine
    reaches the network by (its default route's: found by aiming a UDP socket, which sends nothing). That
    needs no netlink socket, which the service's sandbox does not allow."""
    if host not in ANY:
        return [host]
    for target in ("224.0.0.251", "192.0.2.1"):  # the mDNS group, else any routed address
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 5353))
            address: str = probe.getsockname()[0]
            if not ipaddress.ip_address(address).is_loopback and address != "0.0.0.0":
                return [address]
    return []


def txt_records(identity: Identity, encrypted: bool) -> dict[str, str]:
    records = {
        "friendly_name": identity.friendly_name,
        "version": __version__,
        "mac": identity.mac_hex,
        "platform": "HOST",
        "board": "host",
        "network": "ethernet",
    }
    if encrypted:
        records["api_encryption"] = NOISE_PROTOCOL.decode()
    return records


class Advertisement:
    """Registered in the background at start, withdrawn at stop."""

    def __init__(self, identity: Identity, host: str, encrypted: bool) -> None:
        self._identity = identity
        self._host = host
        self._encrypted = encrypted
        self._zeroconf: Any = None
        self._info: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self, port: int) -> None:
        self._task = asyncio.create_task(self._register(port), name="mdns")

    async def _register(self, port: int) -> None:
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        addresses = advertised_addresses(self._host)
        if not addresses:
            LOG.warning("ESPHome API: no network address to advertise over mDNS")
            return
        name = self._identity.name
        self._info = AsyncServiceInfo(
            SERVICE,
            f"{name}.{SERVICE}",
            addresses=[socket.inet_aton(address) for address in addresses],
            port=port,
            server=f"{name}.local.",
            properties=txt_records(self._identity, self._encrypted),
        )
        interfaces = InterfaceChoice.Default if self._host in ANY else [self._host]
        try:
            self._zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            await (await self._zeroconf.async_register_service(self._info))
        except Exception as exc:  # the API works without it: say why, and go on
            LOG.warning("ESPHome API: cannot advertise %s over mDNS: %s", name, exc)
            return
        LOG.info("ESPHome API advertised over mDNS as %s on %s", name, ", ".join(addresses))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):  # a goodbye that cannot be sent: nothing to do about it
                if self._info is not None:
                    await (await self._zeroconf.async_unregister_service(self._info))
            with contextlib.suppress(Exception):
                await self._zeroconf.async_close()
