"""What the Cartesia engine asks of the network. It speaks only over the WebSocket: the SDK client's
HTTP stack (httpcore and a CA bundle, 3 MB of an idle speaker's memory) is made only if a request ever
needs it. And it does not offer per-message compression: inflating every audio message (base64 PCM,
which compresses little) cost a tenth of the CPU of speaking."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx

from mqtt_speaker.engines.cartesia import CartesiaEngine, _HttpOnDemand
from mqtt_speaker.settings import CartesiaSettings
from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator


def test_making_the_engine_loads_no_http_stack() -> None:
    code = (
        "import sys\n"
        "from mqtt_speaker.engines.cartesia import CartesiaEngine\n"
        "from mqtt_speaker.settings import CartesiaSettings\n"
        "CartesiaEngine(CartesiaSettings(api_key='sk_test'))\n"
        "print(sorted({'httpcore', 'certifi', 'h11'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_http_transport_is_made_at_the_first_request_and_works() -> None:
    async def main() -> tuple[int, bytes]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx.AsyncClient(transport=_HttpOnDemand()) as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
            return response.status_code, response.content

    assert asyncio.run(main()) == (200, b"ok")


def test_the_socket_is_opened_without_compression(emulator: CartesiaEmulator) -> None:
    async def main() -> None:
        engine = CartesiaEngine(CartesiaSettings(api_key=TEST_API_KEY, url=emulator.url))
        try:
            await engine.probe()
        finally:
            await engine.close()

    asyncio.run(main())
    [handshake] = emulator.handshakes
    assert handshake["path"].endswith("/tts/websocket")
    assert "sec-websocket-extensions" not in handshake, handshake["sec-websocket-extensions"]
