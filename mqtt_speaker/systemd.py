"""The systemd notify protocol (Type=notify): READY, STATUS, WATCHDOG and STOPPING, sent on $NOTIFY_SOCKET.

Nothing happens where $NOTIFY_SOCKET is not set (not started by systemd).
"""

from __future__ import annotations

import logging
import os
import socket

LOG = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            LOG.debug("sd_notify %r: %s", message, exc)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    @staticmethod
    def watchdog_interval() -> float | None:
        """Seconds between pings (half of WatchdogSec=), or None when no watchdog is set for us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
