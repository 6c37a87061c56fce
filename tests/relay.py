"""A small TCP relay to the broker that delays what it passes on, as Wi-Fi does: a few milliseconds each
way with jitter, and now and then a burst of tens of milliseconds (netem is not available here). Each
room's daemon connects through its own relay, so the rooms are on separate, differently slow paths."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable

from tests.sound import wait_until


class Relay:
    """127.0.0.1:<port> -> the broker; every chunk delayed by `base` + up to `jitter` seconds, and with
    probability `burst_chance` held for a burst of up to `burst` seconds (order is kept)."""

    def __init__(  # noqa: PLR0913 - the shape of the delay, keyword-only
        self,
        target_port: int,
        *,
        base: float = 0.002,
        jitter: float = 0.003,
        burst: float = 0.04,
        burst_chance: float = 0.03,
        seed: int = 0,
    ) -> None:
        self.target_port = target_port
        self._delay: Callable[[], float] = self._delays(base, jitter, burst, burst_chance, random.Random(seed))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)

    @staticmethod
    def _delays(base: float, jitter: float, burst: float, chance: float, rng: random.Random) -> Callable[[], float]:
        return lambda: base + rng.uniform(0, jitter) + (rng.uniform(burst / 2, burst) if rng.random() < chance else 0)

    def start(self) -> Relay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pass data on, each chunk after its delay, never before the chunk before it."""
        due = 0.0
        try:
            while data := await reader.read(65536):
                due = max(due, time.monotonic() + self._delay())
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                for writer in self._writers:
                    writer.close()
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        wait_until(lambda: not self._thread.is_alive(), 10, "the relay to stop")
