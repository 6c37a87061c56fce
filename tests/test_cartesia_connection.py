"""What the Cartesia engine asks of the network. It speaks only over the WebSocket: the SDK client's
HTTP stack (httpcore and a CA bundle, 3 MB of an idle speaker's memory) is made only if a request ever
needs it. And it does not offer per-message compression: inflating every audio message (base64 PCM,
which compresses little) cost a tenth of the CPU of speaking. Over wss://, as to the real service, the
server's certificate is verified against the system's authorities (SSL_CERT_FILE, SSL_CERT_DIR honoured)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mqtt_speaker.engines.base import SynthesisError
from mqtt_speaker.engines.cartesia import CartesiaEngine, HttpOnDemand
from mqtt_speaker.settings import CartesiaSettings
from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.tls import authority, signed


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
        async with server, httpx.AsyncClient(transport=HttpOnDemand()) as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
            return response.status_code, response.content

    assert asyncio.run(main()) == (200, b"ok")


def probe(url: str) -> None:
    """The engine opens a socket, as before its first request (raises SynthesisError if it cannot)."""

    async def main() -> None:
        engine = CartesiaEngine(CartesiaSettings(api_key=TEST_API_KEY, url=url))
        try:
            await engine.probe()
        finally:
            await engine.close()

    asyncio.run(main())


def test_the_socket_is_opened_without_compression(emulator: CartesiaEmulator) -> None:
    probe(emulator.url)
    [handshake] = emulator.handshakes
    assert handshake["path"].endswith("/tts/websocket")
    assert "sec-websocket-extensions" not in handshake, handshake["sec-websocket-extensions"]


@pytest.fixture
def over_tls(tmp_path: Path) -> Iterator[tuple[CartesiaEmulator, Path]]:
    """The emulator on wss://, its certificate signed by a test authority (returned) no system knows."""
    tls = tmp_path / "tls"
    ca = authority(tls)
    signed(tls, "server", "/CN=127.0.0.1", "IP:127.0.0.1")
    emulator = CartesiaEmulator(tls=(tls / "server.crt", tls / "server.key")).start()
    yield emulator, ca
    emulator.stop()


def test_over_wss_the_servers_certificate_is_verified_against_the_systems_authorities(
    over_tls: tuple[CartesiaEmulator, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, ca = over_tls
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the system's bundle, as far as OpenSSL knows
    probe(emulator.url)
    assert emulator.url.startswith("wss://") and len(emulator.handshakes) == 1


def test_over_wss_a_server_whose_authority_the_system_does_not_know_is_refused(
    over_tls: tuple[CartesiaEmulator, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, _ = over_tls
    monkeypatch.setenv("SSL_CERT_FILE", str(authority(tmp_path / "other")))
    with pytest.raises(SynthesisError, match="CERTIFICATE_VERIFY_FAILED"):
        probe(emulator.url)
    assert emulator.handshakes == []
