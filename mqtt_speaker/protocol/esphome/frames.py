"""The ESPHome native API's framing, without I/O: bytes in, (type id, payload) messages out, and back.

Plaintext: `0x00`, varint payload length, varint type id, the protobuf payload.

Noise (`Noise_NNpsk0_25519_ChaChaPoly_SHA256`, the key ESPHome's `api: encryption: key:` takes), every
frame `0x01`, a 16-bit big-endian length, the body:
- the client says hello (an empty frame, as every client sends), the device answers with its hello
  (`0x01`, its name, `\\0`, its MAC, `\\0`) before it checks anything, so that a client can learn whom it
  reached even with a wrong key (Home Assistant's config flow probes that way);
- then one handshake message each way (a body of `0x00` and the Noise message); a client whose key is
  wrong gets `0x01` and the reason "Handshake MAC failure", which the clients turn into "invalid key";
- then every message is encrypted: type id and payload length (16-bit big-endian each), the payload.

A client of the other kind is told so as ESPHome's firmware tells it (the plaintext client sees a Noise
frame, the Noise client a plaintext one) and the connection ends. Everything a client sends is bounded:
a frame longer than a message may be is refused before it is buffered.
"""

from __future__ import annotations

import base64
from typing import Protocol

MAX_PAYLOAD = 65_535  # bytes of one message's payload, as the clients cap it
MAX_HANDSHAKE = 128  # bytes of a handshake frame's body, as the firmware caps it
MAX_VARINT = 4  # bytes: as the clients cap them
NOISE_PROTOCOL = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
PROLOGUE = b"NoiseAPIInit"
BAD_INDICATOR = b"Bad indicator byte"
MAC_FAILURE = b"Handshake MAC failure"  # the exact words the clients read as "wrong key"
Messages = list[tuple[int, bytes]]


class FrameError(Exception):
    """What a client sent breaks the protocol: `reply` is sent (if anything), then the connection ends."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


class Framer(Protocol):
    def receive(self, data: bytes) -> Messages:
        """The whole messages these bytes complete; FrameError when they break the protocol."""
        ...

    def outgoing(self) -> bytes:
        """What the framing itself has to send now (the Noise hello and handshake), once."""
        ...

    @property
    def ready(self) -> bool:
        """Messages can be sent (a Noise handshake is complete)."""
        ...

    def frame(self, message_type: int, payload: bytes) -> bytes:
        """One message, framed (and encrypted) for the wire."""
        ...


def noise_psk(key: str) -> bytes:
    """The 32 bytes of a base64 key (the settings have checked it)."""
    return base64.b64decode(key.strip())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """(value, position after it), or None while incomplete; FrameError past MAX_VARINT bytes."""
    value = 0
    for index in range(MAX_VARINT):
        if start + index >= len(buffer):
            return None
        byte = buffer[start + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, start + index + 1
    raise FrameError(f"a varint longer than {MAX_VARINT} bytes")


class PlaintextFramer:
    """The plaintext API (no encryption key is configured)."""

    ready = True

    def __init__(self) -> None:
        self._buffer = bytearray()

    def outgoing(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> Messages:
        self._buffer += data
        messages: Messages = []
        while self._buffer:
            indicator = self._buffer[0]
            if indicator == 0x01:
                raise FrameError("a client that encrypts, but no encryption key is set", reply=b"\x00" + BAD_INDICATOR)
            if indicator != 0x00:
                raise FrameError(f"bad indicator byte {indicator:#04x}")
            length = _read_varint(self._buffer, 1)
            if length is None:
                break
            size, at = length
            if size > MAX_PAYLOAD:
                raise FrameError(f"a message of {size} bytes (at most {MAX_PAYLOAD})")
            kind = _read_varint(self._buffer, at)
            if kind is None:
                break
            message_type, at = kind
            if len(self._buffer) < at + size:
                break
            messages.append((message_type, bytes(self._buffer[at : at + size])))
            del self._buffer[: at + size]
        return messages

    def frame(self, message_type: int, payload: bytes) -> bytes:
        return b"\x00" + _varint(len(payload)) + _varint(message_type) + payload
