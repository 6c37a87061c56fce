"""The encrypted ESPHome API (imported only where a key is set): its framing (NoiseFramer), and the
responder's side of Noise_NNpsk0_25519_ChaChaPoly_SHA256, the handshake of ESPHome's encrypted API, as
the Noise Protocol Framework (revision 34) defines it: the pattern `-> psk, e` / `<- e, ee`, then one
cipher each way.

Its primitives are libsodium's (PyNaCl: X25519 and ChaCha20-Poly1305, the tag checked there) and the
standard library's SHA-256 and HMAC; only the framework's bookkeeping (section 5: the symmetric state,
HKDF, the nonces) is written here. Not the `noise` library that aioesphomeapi uses: it needs
`cryptography`, 8.7 MB of resident memory against PyNaCl's 0.9 on a device that keeps it for good. The
tests check this side against that library and against aioesphomeapi's clients, both releases.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from enum import Enum, auto

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as SodiumError

from mqtt_speaker.protocol.esphome.frames import (
    BAD_INDICATOR,
    MAC_FAILURE,
    MAX_HANDSHAKE,
    NOISE_PROTOCOL,
    PROLOGUE,
    FrameError,
    Messages,
)

NAME = NOISE_PROTOCOL
DHLEN = 32
TAGLEN = 16
MAX_NONCE = 2**64 - 1  # the framework's limit: a cipher is never used past it


class HandshakeFailed(Exception):
    """`wrong_key`: the client's first message does not authenticate (its key is not ours)."""

    def __init__(self, message: str, *, wrong_key: bool) -> None:
        super().__init__(message)
        self.wrong_key = wrong_key


def _hkdf(chaining_key: bytes, material: bytes, outputs: int) -> list[bytes]:
    """The framework's HKDF (section 4.3): HMAC-SHA256 over the chaining key, 2 or 3 outputs."""
    temp = hmac.digest(chaining_key, material, "sha256")
    out, last = [], b""
    for index in range(1, outputs + 1):
        last = hmac.digest(temp, last + bytes([index]), "sha256")
        out.append(last)
    return out


class Cipher:
    """A CipherState with its key: ChaCha20-Poly1305, the nonce 32 zero bits and a 64-bit little-endian count."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._nonce = 0

    def _next(self) -> bytes:
        if self._nonce >= MAX_NONCE:
            raise HandshakeFailed("the cipher's nonces are used up", wrong_key=False)
        nonce = b"\0\0\0\0" + self._nonce.to_bytes(8, "little")
        self._nonce += 1
        return nonce

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        return crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, self._next(), self._key)

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """The plaintext; CryptoError when it does not authenticate."""
        return crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, self._next(), self._key)


class Responder:
    """One handshake, the device's side: `read` the client's message, `write` the answer, which also gives the
    two transport ciphers (receive, send)."""

    def __init__(self, psk: bytes, prologue: bytes) -> None:
        self._h = hashlib.sha256(NAME).digest()  # the name is longer than the hash: its hash
        self._ck = self._h
        self._cipher: Cipher | None = None
        self._psk = psk
        self._remote = b""
        self._mix_hash(prologue)

    def _mix_hash(self, data: bytes) -> None:
        self._h = hashlib.sha256(self._h + data).digest()

    def _mix_key(self, material: bytes) -> None:
        self._ck, key = _hkdf(self._ck, material, 2)
        self._cipher = Cipher(key)

    def _mix_key_and_hash(self, material: bytes) -> None:
        self._ck, temp_h, key = _hkdf(self._ck, material, 3)
        self._mix_hash(temp_h)
        self._cipher = Cipher(key)

    def read(self, message: bytes) -> None:
        """`-> psk, e` and its (empty) payload. HandshakeFailed, `wrong_key` when it does not authenticate."""
        if len(message) < DHLEN + TAGLEN:
            raise HandshakeFailed(f"a first handshake message of {len(message)} bytes", wrong_key=False)
        self._mix_key_and_hash(self._psk)
        self._remote = message[:DHLEN]
        self._mix_hash(self._remote)
        self._mix_key(self._remote)  # a PSK handshake mixes the ephemeral key in too (section 9.2)
        sealed = message[DHLEN:]
        assert self._cipher is not None
        try:
            self._cipher.decrypt(sealed, self._h)
        except CryptoError:
            raise HandshakeFailed(
                "the client's first handshake message does not authenticate", wrong_key=True
            ) from None
        self._mix_hash(sealed)

    def write(self) -> tuple[bytes, Cipher, Cipher]:
        """`<- e, ee` and an empty payload; then the ciphers to receive and to send with."""
        private = os.urandom(DHLEN)
        public = crypto_scalarmult_base(private)
        self._mix_hash(public)
        self._mix_key(public)
        try:
            shared = crypto_scalarmult(private, self._remote)
        except SodiumError:  # a low-order point: no key can come of it
            raise HandshakeFailed("the client's ephemeral key is not usable", wrong_key=False) from None
        self._mix_key(shared)
        assert self._cipher is not None
        sealed = self._cipher.encrypt(b"", self._h)
        self._mix_hash(sealed)
        receive, send = _hkdf(self._ck, b"", 2)
        return public + sealed, Cipher(receive), Cipher(send)


class _Stage(Enum):
    HELLO = auto()
    HANDSHAKE = auto()
    READY = auto()


def _noise_frame(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(2, "big") + body


def _reject(reason: bytes) -> bytes:
    return _noise_frame(b"\x01" + reason)


class NoiseFramer:
    """The encrypted API (an encryption key is configured; frames.py says how its frames look): the
    responder's side of the handshake, then every message encrypted. `name` and `mac` (hex, no colons) are
    what the device's hello says."""

    def __init__(self, psk: bytes, name: str, mac: str) -> None:
        self._psk = psk
        self._hello = b"\x01" + name.encode() + b"\0" + mac.encode() + b"\0"
        self._stage = _Stage.HELLO
        self._handshake: Responder | None = None
        self._receiving: Cipher | None = None
        self._sending: Cipher | None = None
        self._buffer = bytearray()
        self._out = bytearray()

    @property
    def ready(self) -> bool:
        return self._stage is _Stage.READY

    def outgoing(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def receive(self, data: bytes) -> Messages:
        self._buffer += data
        messages: Messages = []
        while len(self._buffer) >= 3:
            if self._buffer[0] != 0x01:
                reply = _reject(BAD_INDICATOR) if self._stage is _Stage.HELLO else b""
                raise FrameError(f"bad indicator byte {self._buffer[0]:#04x} (a client that does not encrypt?)", reply)
            size = int.from_bytes(self._buffer[1:3], "big")
            if self._stage is not _Stage.READY and size > MAX_HANDSHAKE:
                raise FrameError(f"a handshake frame of {size} bytes", reply=_reject(b"Bad handshake packet len"))
            if len(self._buffer) < 3 + size:
                break
            body = bytes(self._buffer[3 : 3 + size])
            del self._buffer[: 3 + size]
            if self._stage is _Stage.HELLO:
                self._client_hello(body)
            elif self._stage is _Stage.HANDSHAKE:
                self._client_handshake(body)
            else:
                messages.append(self._decrypt(body))
        return messages

    def _client_hello(self, body: bytes) -> None:
        """The client's hello: the prologue is made of it; the device's hello goes out at once."""
        self._handshake = Responder(self._psk, PROLOGUE + len(body).to_bytes(2, "big") + body)
        self._out += _noise_frame(self._hello)
        self._stage = _Stage.HANDSHAKE

    def _client_handshake(self, body: bytes) -> None:
        if not body or body[0] != 0x00:
            raise FrameError("a handshake frame that is not one", reply=_reject(b"Bad handshake error byte"))
        assert self._handshake is not None
        try:
            self._handshake.read(body[1:])
            answer, self._receiving, self._sending = self._handshake.write()
        except HandshakeFailed as exc:
            if exc.wrong_key:
                raise FrameError(
                    "the client's encryption key is not this device's", reply=_reject(MAC_FAILURE)
                ) from None
            raise FrameError(f"a malformed handshake ({exc})", reply=_reject(b"Handshake error")) from None
        self._out += _noise_frame(b"\x00" + answer)
        self._handshake = None
        self._stage = _Stage.READY

    def _decrypt(self, body: bytes) -> tuple[int, bytes]:
        assert self._receiving is not None
        try:
            plain = self._receiving.decrypt(body)
        except (CryptoError, HandshakeFailed):
            raise FrameError("a frame that does not decrypt") from None
        if len(plain) < 4 or int.from_bytes(plain[2:4], "big") != len(plain) - 4:
            raise FrameError("an encrypted frame whose inner header does not match it")
        return int.from_bytes(plain[:2], "big"), plain[4:]

    def frame(self, message_type: int, payload: bytes) -> bytes:
        assert self._sending is not None
        header = message_type.to_bytes(2, "big") + len(payload).to_bytes(2, "big")
        return _noise_frame(self._sending.encrypt(header + payload))
