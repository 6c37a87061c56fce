"""Audio from a URL (mp3, flac, ogg, opus, wav, Home Assistant's TTS proxy...): fetched by the daemon with
httpx, decoded by ffmpeg in a subprocess fed on its stdin, and read back as mono 16-bit PCM at the device's
rate, as it arrives.

ffmpeg runs only while something plays (it costs the daemon nothing when idle); the daemon fetches the URL
itself, so only http(s) is ever opened and every bound is its own (ffmpeg may open nothing but its stdin:
a playlist naming a file or another URL is not followed). Everything is bounded: the time to
connect and between two reads (`media.timeout`), the bytes fetched (`media.max_mb`), the audio played
(`media.max_duration`, which also ends an endless stream); each failure is a SynthesisError with a code
that says which: media_unavailable (unreachable, an HTTP error, stalled), media_invalid (not audio ffmpeg
can decode), media_too_long, engine_unavailable (no ffmpeg). Playback paces the fetch: what is not yet
played waits in the pipes and the server's socket, not in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from mqtt_speaker import __version__
from mqtt_speaker.engines.base import PcmAssembler, SynthesisError
from mqtt_speaker.settings import MediaSettings
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.vocabulary import ErrorCode, is_media_url

if TYPE_CHECKING:
    import httpx

LOG = logging.getLogger(__name__)
READ_SIZE = 8192  # bytes of PCM read from ffmpeg at a time (85 ms at 48 kHz)
STALL_MARGIN = 5.0  # seconds past media.timeout without decoded audio: stalled (the fetch's own timeouts first)
MAX_REDIRECTS = 5
FEEDER_GRACE = 1.0  # seconds the fetch has to end (or say why it failed) once ffmpeg's output has ended
ERROR_LINES = 3  # the last lines of ffmpeg's complaints in the error message
ERROR_TAIL = 2048  # bytes of them kept


class MediaSource:
    """Streams of PCM from URLs (event loop only; one ffmpeg per stream)."""

    def __init__(self, settings: MediaSettings) -> None:
        self._settings = settings

    async def stream(
        self, url: str, rate: int, *, segment: int = 0, max_seconds: float | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """The URL's audio as chunks at `rate` (tagged `segment`), at most `max_seconds` of it (default:
        media.max_duration); SynthesisError when it cannot be had, at any point. Close it to abandon it."""
        if not is_media_url(url):
            raise SynthesisError(ErrorCode.MEDIA_INVALID, f"not an http(s) URL: {url[:80]!r}")
        limit = int((max_seconds or self._settings.max_duration) * rate)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._settings.ffmpeg,
                *("-hide_banner", "-nostats", "-loglevel", "error"),
                *("-protocol_whitelist", "pipe", "-i", "pipe:0"),  # a playlist opens nothing: only the fetched bytes
                *("-vn", "-ac", "1", "-ar", str(rate), "-f", "s16le", "pipe:1"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SynthesisError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"cannot run {self._settings.ffmpeg} to decode media: {exc.strerror or exc} (install ffmpeg)",
            ) from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        fetch = _Fetch(url, self._settings, proc)
        feeder = asyncio.create_task(fetch.run(proc.stdin), name=f"fetch {url[:40]}")
        complaints = _Complaints()
        listener = asyncio.create_task(complaints.collect(proc.stderr))
        try:
            pcm = PcmAssembler()
            frames = 0
            while data := await self._read(proc.stdout, feeder):
                samples = pcm.feed(data)
                if frames + samples.size > limit:
                    yield AudioChunk(samples=samples[: limit - frames], sample_rate=rate, segment=segment)
                    raise SynthesisError(
                        ErrorCode.MEDIA_TOO_LONG, f"cut after {limit / rate:.0f} s of audio (media.max_duration)"
                    )
                frames += samples.size
                if samples.size:
                    yield AudioChunk(samples=samples, sample_rate=rate, segment=segment)
            await asyncio.wait({feeder}, timeout=FEEDER_GRACE)  # ffmpeg ended: the fetch ends too, or failed
            if feeder.done() and not feeder.cancelled() and (failed := feeder.exception()) is not None:
                raise failed
            returncode = await proc.wait()
            await listener
            if returncode != 0 or frames == 0:
                said = complaints.text() or f"ffmpeg exited with {returncode}"
                what = "no audio that ffmpeg can decode" if frames == 0 else "audio that ffmpeg could not decode whole"
                raise SynthesisError(ErrorCode.MEDIA_INVALID, f"{what}{fetch.described()}: {said}")
        finally:
            feeder.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            # The process has ended only once its pipes have: what it wrote and was not read is read away.
            await asyncio.gather(feeder, listener, _drain(proc.stdout), return_exceptions=True)
            await proc.wait()

    async def _read(self, stdout: asyncio.StreamReader, feeder: asyncio.Task[None]) -> bytes:
        """The next PCM from ffmpeg (b"" at its end); when none comes for too long, the fetch's failure, or
        media_unavailable."""
        try:
            return await asyncio.wait_for(stdout.read(READ_SIZE), self._settings.timeout + STALL_MARGIN)
        except TimeoutError:
            if feeder.done() and not feeder.cancelled() and (failed := feeder.exception()) is not None:
                raise failed from None
            raise SynthesisError(
                ErrorCode.MEDIA_UNAVAILABLE, f"stalled: no audio for {self._settings.timeout + STALL_MARGIN:.0f} s"
            ) from None


class _Fetch:
    """The URL's bytes into ffmpeg's stdin; on a failure ffmpeg is killed, so its output ends at once."""

    def __init__(self, url: str, settings: MediaSettings, proc: asyncio.subprocess.Process) -> None:
        self._url = url
        self._settings = settings
        self._proc = proc
        self.content_type: str | None = None

    def described(self) -> str:
        return f" (Content-Type {self.content_type})" if self.content_type else ""

    async def run(self, stdin: asyncio.StreamWriter) -> None:
        import httpx  # only when media is played: the import costs memory a daemon without Cartesia never needs

        try:
            await self._copy(stdin)
        except (BrokenPipeError, ConnectionResetError):
            return  # ffmpeg ended first: it had enough (or failed, which it says)
        except httpx.HTTPError as exc:
            self._kill()
            raise SynthesisError(ErrorCode.MEDIA_UNAVAILABLE, f"cannot fetch it: {_reason(exc)}") from exc
        except SynthesisError:
            self._kill()
            raise
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                stdin.close()

    async def _copy(self, stdin: asyncio.StreamWriter) -> None:
        import httpx

        limit = int(self._settings.max_mb * 1_000_000)
        timeout = httpx.Timeout(self._settings.timeout)
        headers = {"User-Agent": f"mqtt-speaker/{__version__}", "Accept": "audio/*, */*;q=0.5"}
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=MAX_REDIRECTS) as client,
            client.stream("GET", self._url, headers=headers) as response,
        ):
            self.content_type = response.headers.get("content-type")
            if response.status_code >= 400:
                raise SynthesisError(
                    ErrorCode.MEDIA_UNAVAILABLE, f"the server answered {response.status_code} {response.reason_phrase}"
                )
            fetched = 0
            async for data in response.aiter_bytes():
                fetched += len(data)
                if fetched > limit:
                    raise SynthesisError(
                        ErrorCode.MEDIA_TOO_LONG, f"more than {self._settings.max_mb:g} MB (media.max_mb)"
                    )
                stdin.write(data)
                await stdin.drain()

    def _kill(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()


def _reason(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


class _Complaints:
    """What ffmpeg writes on stderr: its last few lines are kept, however much it writes."""

    def __init__(self) -> None:
        self._tail = b""

    async def collect(self, stderr: asyncio.StreamReader) -> None:
        while data := await stderr.read(4096):
            self._tail = (self._tail + data)[-ERROR_TAIL:]

    def text(self) -> str:
        lines = [line.strip() for line in self._tail.decode("utf-8", "replace").splitlines() if line.strip()]
        return "; ".join(lines[-ERROR_LINES:])
