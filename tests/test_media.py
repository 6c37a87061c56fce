"""Media from a URL (engines/media.py), against a local HTTP server and the real ffmpeg: every format
decodes to the right tone at the device's rate, and every bad URL ends with its own clear error, quickly,
leaving no ffmpeg behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mqtt_speaker.engines.base import SynthesisError
from mqtt_speaker.engines.media import MediaSource
from mqtt_speaker.settings import MediaSettings
from mqtt_speaker.speech.vocabulary import ErrorCode
from tests.conftest import free_port
from tests.media_server import SECONDS, TONES, MediaServer

RATE = 16000


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


def fetch(url: str, **settings: Any) -> tuple[np.ndarray, float]:
    """All the URL's samples at RATE, and how long it took; or the SynthesisError."""
    source = MediaSource(MediaSettings(**settings))

    async def read() -> np.ndarray:
        chunks = [chunk.samples async for chunk in source.stream(url, RATE)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    began = time.monotonic()
    samples = asyncio.run(read())
    return samples, time.monotonic() - began


def failure(url: str, **settings: Any) -> tuple[SynthesisError, float]:
    began = time.monotonic()
    with pytest.raises(SynthesisError) as raised:
        fetch(url, **settings)
    return raised.value, time.monotonic() - began


def frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * RATE / samples.size)


def ffmpegs() -> int:
    """ffmpeg processes that are children of this test process (none may be left)."""
    import os
    from pathlib import Path

    mine = str(os.getpid())
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ")[-1].split()
            name = stat.read_text().split("(")[1].split(")")[0]
        except (OSError, IndexError):
            continue
        count += name == "ffmpeg" and fields[1] == mine
    return count


@pytest.mark.parametrize("name", sorted(TONES))
def test_every_format_decodes_to_its_tone_at_the_devices_rate(media: MediaServer, name: str) -> None:
    samples, _ = fetch(media.url(name))
    assert samples.size / RATE == pytest.approx(SECONDS, abs=0.1)  # stereo 44.1 kHz, made mono at 16 kHz
    assert frequency(samples) == pytest.approx(TONES[name][0], abs=3)
    assert 0.3 < np.abs(samples).max() / 32768 < 0.55  # half scale in each channel, mixed down (ffmpeg: -3 dB)
    assert ffmpegs() == 0


@pytest.mark.parametrize(
    ("path", "code", "said"),
    [
        ("missing", ErrorCode.MEDIA_UNAVAILABLE, "404"),
        ("page.html", ErrorCode.MEDIA_INVALID, "text/html"),
        ("noise", ErrorCode.MEDIA_INVALID, "application/octet-stream"),
        # ffmpeg reads only what the daemon fetched: a playlist cannot make it open a file (or a URL) itself.
        ("playlist.m3u8", ErrorCode.MEDIA_INVALID, "application/vnd.apple.mpegurl"),
    ],
)
def test_a_bad_url_fails_at_once_with_a_clear_error(media: MediaServer, path: str, code: ErrorCode, said: str) -> None:
    error, took = failure(media.url(path))
    assert error.code is code and said in error.message, error.message
    assert took < 10
    assert ffmpegs() == 0


def test_an_unreachable_server_and_a_url_that_is_not_http_fail_clearly() -> None:
    error, took = failure(f"http://127.0.0.1:{free_port()}/x.mp3")
    assert error.code is ErrorCode.MEDIA_UNAVAILABLE and "ConnectError" in error.message and took < 5
    error, _ = failure("file:///etc/passwd")
    assert error.code is ErrorCode.MEDIA_INVALID and "not an http(s) URL" in error.message


def test_an_endless_stream_is_cut_at_the_longest_duration(media: MediaServer) -> None:
    source = MediaSource(MediaSettings(max_duration=3))
    heard: list[np.ndarray] = []

    async def read() -> None:
        async for chunk in source.stream(media.url("endless.mp3"), RATE):
            heard.append(chunk.samples)

    with pytest.raises(SynthesisError) as raised:
        asyncio.run(read())
    assert raised.value.code is ErrorCode.MEDIA_TOO_LONG and "media.max_duration" in raised.value.message
    assert sum(s.size for s in heard) == 3 * RATE  # every sample up to the limit, none past it
    assert ffmpegs() == 0


def test_more_bytes_than_the_limit_are_refused(media: MediaServer) -> None:
    error, _ = failure(media.url("endless.mp3"), max_mb=0.05)
    assert error.code is ErrorCode.MEDIA_TOO_LONG and "media.max_mb" in error.message


def test_a_server_that_stops_sending_fails_after_the_timeout(media: MediaServer) -> None:
    error, took = failure(media.url("stall"), timeout=1)
    assert error.code is ErrorCode.MEDIA_UNAVAILABLE and "ReadTimeout" in error.message
    assert 1 <= took < 8
    assert ffmpegs() == 0


def test_without_ffmpeg_the_error_says_to_install_it(media: MediaServer) -> None:
    error, _ = failure(media.url("tone.mp3"), ffmpeg="/nonexistent/ffmpeg")
    assert error.code is ErrorCode.ENGINE_UNAVAILABLE and "install ffmpeg" in error.message


def test_closing_it_while_its_pipes_are_full_ends_at_once_and_leaves_no_ffmpeg(media: MediaServer) -> None:
    source = MediaSource(MediaSettings())

    async def paused_then_closed() -> float:
        stream = source.stream(media.url("endless.mp3"), RATE)
        await anext(stream)
        await asyncio.sleep(2)  # not read meanwhile, as while the device plays what it has: the pipes fill up
        began = time.monotonic()
        await asyncio.wait_for(stream.aclose(), 10)
        return time.monotonic() - began

    assert asyncio.run(paused_then_closed()) < 1
    assert ffmpegs() == 0
