"""The ESPHome API's listening socket: at most MAX_CONNECTIONS clients at once (Home Assistant needs one, and
briefly one more for each config flow or reauthentication probe); each gets its framing (plaintext, or
Noise when a key is set) and a Connection. The connection's code, and protobuf with it, is loaded with the
first client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mqtt_speaker.protocol.esphome.frames import Framer
from mqtt_speaker.protocol.esphome.identity import Identity

if TYPE_CHECKING:
    from mqtt_speaker.protocol.esphome.connection import Connection

LOG = logging.getLogger(__name__)
MAX_CONNECTIONS = 8
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about refused clients
GOODBYE_GRACE = 1.0  # seconds the clients have to take their DisconnectRequest at shutdown


@dataclass(frozen=True)
class PlayerView:
    """The media player as a client sees it."""

    playing: bool
    volume: float  # 0-1
    muted: bool


class Device(Protocol):
    """What a connection asks of the speaker (the adapter)."""

    identity: Identity
    encrypted: bool

    def player(self) -> PlayerView: ...

    def play(self, url: str, *, announce: bool, enqueue: bool) -> None: ...

    def announce(self, connection: Connection, text: str, media_id: str, preannounce: str) -> None: ...

    def set_volume(self, volume: float) -> None: ...

    def set_muted(self, muted: bool) -> None: ...

    def stop_playing(self) -> None: ...

    def closed(self, connection: Connection) -> None: ...


class ApiServer:
    """Listens on host:port; `connections` are the clients now connected (event loop only)."""

    def __init__(self, host: str, port: int, framer: Callable[[], Framer], device: Device) -> None:
        self._host = host
        self._port = port
        self._framer = framer
        self._device = device
        self._server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused = 0
        self._refusal_logged = 0.0

    @property
    def port(self) -> int:
        """The port listened on (the one asked for, or the one the system gave for 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen (OSError when the address cannot be had: the port taken, say)."""
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        LOG.info("ESPHome API listening on %s:%d", self._host, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= MAX_CONNECTIONS:
            self._refuse(writer)
            return
        from mqtt_speaker.protocol.esphome.connection import Connection

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = Connection(reader, writer, self._framer(), self._device)
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:  # a bug in one connection must not reach the server, or any other client
            LOG.exception("ESPHome API: the connection from %s failed", connection.peer)
            connection.close()
        finally:
            self.connections.discard(connection)
            self._tasks.discard(task)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            peer = writer.get_extra_info("peername")
            LOG.warning(
                "ESPHome API: %d clients already connected; refused %s (%d refused since the last line)",
                MAX_CONNECTIONS,
                peer[0] if isinstance(peer, tuple) else "?",
                self._refused,
            )
            self._refusal_logged, self._refused = now, 0
        writer.transport.abort()

    async def stop(self) -> None:
        """Take no one new; ask the clients to disconnect, and close them."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.say_goodbye()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=GOODBYE_GRACE)
        for connection in list(self.connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), GOODBYE_GRACE)
