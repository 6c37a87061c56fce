"""A local HTTP server of media for the tests: tones in every format the daemon decodes (made by ffmpeg, each
at its own pitch, so a capture tells them apart), and every bad answer a media URL can give (an HTTP error,
a page that is not audio, an endless stream, an endless stream of noise that is not audio, a server that
stalls). Runs in a thread; `url(name)` is where each is served."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TONES = {  # name: (frequency, ffmpeg's output options)
    "tone.mp3": (440.0, ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "tone.wav": (550.0, ["-c:a", "pcm_s16le"]),
    "tone.flac": (660.0, ["-c:a", "flac"]),
    "tone.ogg": (770.0, ["-c:a", "libvorbis"]),
    "tone.opus": (880.0, ["-c:a", "libopus"]),
}
SECONDS = 1.5  # each tone's length
TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".opus": "audio/ogg"}


def make_tone(path: Path, frequency: float, options: list[str], seconds: float = SECONDS) -> None:
    """A sine tone at half scale in both channels, at 44.1 kHz (so the daemon downmixes and resamples it)."""
    sine = f"sine=frequency={frequency}:sample_rate=44100:duration={seconds}"  # at 1/8 of full scale
    quiet = ["-hide_banner", "-loglevel", "error"]
    subprocess.run(
        ["ffmpeg", *quiet, "-f", "lavfi", "-i", sine, "-af", "volume=4", "-ac", "2", *options, "-y", str(path)],
        check=True,
    )


class MediaServer:
    """Serves /tone.mp3 (and .wav, .flac, .ogg, .opus), /missing (404), /page.html (not audio),
    /playlist.m3u8 (an HLS playlist whose segment is a file of this machine), /endless.mp3 (the mp3 over
    and over, never ending), /noise (endless random bytes) and /stall (headers, a little audio, then
    nothing). `requests` counts what was asked for."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqtt-speaker-media-"))
        for name, (frequency, options) in TONES.items():
            make_tone(self.dir / name, frequency, options)
        # Bare mp3 frames (no ID3 tag, no Xing frame) to repeat for the endless stream.
        make_tone(self.dir / "loop.mp3", 440.0, ["-c:a", "libmp3lame", "-write_xing", "0", "-id3v2_version", "0"])
        # An MPEG-TS segment, which ffmpeg's HLS demuxer would play from a playlist if it were let open files.
        make_tone(self.dir / "segment.ts", 440.0, ["-c:a", "mp2"])
        self.requests: list[str] = []
        media = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                media.requests.append(self.path)
                media.answer(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> MediaServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = request.path.lstrip("/").split("?")[0]
        try:
            if path in TONES:
                self._send(request, (self.dir / path).read_bytes(), TYPES[Path(path).suffix])
            elif path == "page.html":
                self._send(request, b"<html><body>Not audio</body></html>" * 20, "text/html")
            elif path == "playlist.m3u8":  # a playlist naming a file of this machine: never opened
                playlist = (
                    f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile://{self.dir / 'segment.ts'}\n#EXT-X-ENDLIST\n"
                )
                self._send(request, playlist.encode(), "application/vnd.apple.mpegurl")
            elif path == "endless.mp3":
                self._endless(request, (self.dir / "loop.mp3").read_bytes(), "audio/mpeg")
            elif path == "noise":
                self._endless(request, None, "application/octet-stream")
            elif path == "stall":
                request.send_response(200)
                request.send_header("Content-Type", "audio/mpeg")
                request.end_headers()
                request.wfile.write((self.dir / "tone.mp3").read_bytes()[:4000])
                request.wfile.flush()
                time.sleep(60)
            else:
                request.send_error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            return  # the daemon stopped reading: as it should

    @staticmethod
    def _send(request: http.server.BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    @staticmethod
    def _endless(request: http.server.BaseHTTPRequestHandler, body: bytes | None, content_type: str) -> None:
        """The same bytes again and again (random ones when None), until the client goes away."""
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.end_headers()
        while True:
            request.wfile.write(body if body is not None else os.urandom(65536))
            time.sleep(0.01)
