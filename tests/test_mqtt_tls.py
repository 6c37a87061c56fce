"""TLS to the broker: client certificates work, and the broker's host name is checked (README)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.test_cli import cli
from tests.tls import authority, signed

pytestmark = pytest.mark.e2e


@pytest.fixture
def cert_broker(workdir: Path) -> Iterator[tuple[Broker, Path]]:
    """mosquitto on TLS that asks every client for a certificate of its CA (the TLS handshake fails
    without one); its own certificate names 127.0.0.1 only, not localhost."""
    tls = workdir / "tls"
    authority(tls)
    signed(tls, "server", "/CN=127.0.0.1", "IP:127.0.0.1")
    signed(tls, "client", "/CN=speaker")
    config = (
        "user root\nallow_anonymous true\npersistence false\n"
        "listener {port} 127.0.0.1\nrequire_certificate true\n"
        f"cafile {tls / 'ca.crt'}\ncertfile {tls / 'server.crt'}\nkeyfile {tls / 'server.key'}\n"
    )
    broker = Broker(workdir, config)
    broker.start()
    yield broker, tls
    broker.stop()


def broker_line(broker: Broker, tls: Path, workdir: Path, host: str = "127.0.0.1", **extra: str) -> str:
    env = {
        "MQTT_SPEAKER_MQTT__HOST": host,
        "MQTT_SPEAKER_MQTT__PORT": str(broker.port),
        "MQTT_SPEAKER_MQTT__TLS": "true",
        "MQTT_SPEAKER_MQTT__CA_CERTS": str(tls / "ca.crt"),
        "MQTT_SPEAKER_AUDIO__OUTPUT_DIR": str(workdir / "out"),
        **extra,
    }
    result = cli("check", env=env)
    return next(line for line in result.stdout.splitlines() if " broker " in line)


def client_cert(tls: Path) -> dict[str, str]:
    return {
        "MQTT_SPEAKER_MQTT__CERTFILE": str(tls / "client.crt"),
        "MQTT_SPEAKER_MQTT__KEYFILE": str(tls / "client.key"),
    }


def test_a_client_certificate_is_presented(cert_broker: tuple[Broker, Path], workdir: Path) -> None:
    broker, tls = cert_broker
    assert broker_line(broker, tls, workdir, **client_cert(tls)).startswith("ok"), "with the certificate"
    assert broker_line(broker, tls, workdir).startswith("FAIL"), "without it the broker refuses"


def test_a_broker_whose_certificate_names_another_host_is_refused(
    cert_broker: tuple[Broker, Path], workdir: Path
) -> None:
    broker, tls = cert_broker
    line = broker_line(broker, tls, workdir, host="localhost", **client_cert(tls))
    assert line.startswith("FAIL") and "mismatch" in line.lower(), line
