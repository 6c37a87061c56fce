"""cartesia_auth and cartesia_rate_limited also come from error frames on an open socket, not only from
the handshake (the emulator answers the voices 'key-revoked' and 'over-quota' with 401 and 429 frames)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("voice", "code", "status"),
    [("key-revoked", "cartesia_auth", "401"), ("over-quota", "cartesia_rate_limited", "429")],
)
def test_an_error_frame_with_a_status_fails_with_its_code(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], voice: str, code: str, status: str
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.say(json.dumps({"id": "framed", "text": "Refused on the way", "voice": voice}))
    failed = daemon.wait_terminal("framed")
    assert (failed["event_type"], failed["code"]) == ("failed", code), failed
    assert status in failed["message"]
    error = daemon.wait_for_error(lambda e: e["code"] == code)
    assert error["id"] == "framed"
