"""The MQTT core: one paho client whose network thread only hands messages over to the event loop.

paho reconnects by itself with backoff; on every (re)connect we subscribe again and the daemon
republishes availability and state, so a broker restart never leaves the speaker deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_speaker.settings import ConfigError, MqttSettings

LOG = logging.getLogger(__name__)
INBOUND_LIMIT = 2000  # messages handed over by paho's thread and not yet handled on the loop
OUTBOUND_LIMIT = 5000  # messages paho holds for the broker (in flight, or waiting for a reconnect)
RETAINED_RESERVE = 100  # room past it for retained ones: availability and state must get out after an outage
QUEUED = (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)  # NO_CONN at QoS 1: kept, sent after the reconnect


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool
    received: float = field(default_factory=time.time)  # wall clock, stamped on paho's thread (sync.py)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: str


def new_client(settings: MqttSettings, client_id: str) -> paho.Client:
    """A paho client (MQTT 5) with the credentials applied; shared by the daemon and the CLI."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    client.reconnect_delay_set(settings.reconnect_min_delay, settings.reconnect_max_delay)
    if settings.tls:
        try:
            client.tls_set(
                ca_certs=str(settings.ca_certs) if settings.ca_certs else None,
                certfile=str(settings.certfile) if settings.certfile else None,
                keyfile=str(settings.keyfile) if settings.keyfile else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"mqtt TLS settings: {exc}") from exc
        client.tls_insecure_set(settings.tls_insecure)
    if LOG.isEnabledFor(logging.DEBUG):  # paho logs every failed reconnect at ERROR: only when debugging
        client.enable_logger(logging.getLogger("paho"))
    without_tcp_delays(client)
    return client


class BrokerUnreachable(Exception):
    """A command's client cannot connect to the broker (the message says where and why)."""


@contextlib.contextmanager
def one_shot(settings: MqttSettings, name: str, *, keepalive: int = 30, **callbacks: Any) -> Iterator[paho.Client]:
    """A short-lived client for a command (say, discovery --remove, check), with `callbacks` (on_connect,
    on_message, ...) set: connected, its network thread running; disconnected when the block ends.
    BrokerUnreachable when the broker cannot be reached."""
    client = new_client(settings, f"mqtt-speaker-{name}-{uuid.uuid4().hex[:8]}")
    for callback, function in callbacks.items():
        setattr(client, callback, function)
    try:
        client.connect(settings.host, settings.port, keepalive=keepalive)
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the broker at {settings.host}:{settings.port}: {exc}") from exc
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def without_tcp_delays(client: paho.Client) -> None:
    """paho leaves TCP's small-packet delays on; MQTT packets are small and latency-bound, so turn both
    off. Measured on loopback before: a state sent just after a `queued` event reached the broker 85 ms
    late, and a say arriving just after the broker had acknowledged our announcements waited 40 ms."""
    client.on_socket_open = _no_delay
    client.on_publish = acknowledge_now


def _no_delay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    """Nagle off: a packet sent while an earlier one is unacknowledged no longer waits for that ACK."""
    with contextlib.suppress(OSError, AttributeError):  # not TCP (a unix socket, websockets): nothing to do
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def acknowledge_now(client: paho.Client, *_: Any) -> None:
    """On a PUBACK, ACK it at once instead of up to 40 ms later (Linux's delayed ACK). A broker with
    Nagle on (mosquitto's default, set_tcp_nodelay false) holds its next packet to us, say a new
    request, until that ACK arrives."""
    sock: Any = client.socket()
    with contextlib.suppress(OSError, AttributeError):  # TCP_QUICKACK is Linux only; not TCP: nothing to do
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def connect_properties(session_expiry: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry
    return props


class MqttLink:
    """Subscribes, delivers inbound messages to the loop, publishes. Callbacks run on the loop."""

    def __init__(  # noqa: PLR0913 - the link's callbacks and bounds (keyword-only)
        self,
        settings: MqttSettings,
        client_id: str,
        will: Will,
        *,
        on_message: Callable[[Inbound], None],
        on_connected: Callable[[], None],
        on_problem: Callable[[str], None],
        on_dropped: Callable[[str], None] = lambda _message: None,
        inbound_limit: int = INBOUND_LIMIT,
        outbound_limit: int = OUTBOUND_LIMIT,
    ) -> None:
        self._settings = settings
        self._subscriptions: list[str] = []
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_problem = on_problem
        self._on_dropped = on_dropped
        self._inbound_limit = inbound_limit
        self._lock = threading.Lock()  # the counters shared with paho's thread
        self._inbound_pending = 0  # handed over, not yet handled (paho's thread adds, the loop subtracts)
        self._inbound_dropped = 0  # since the last report
        self.dropped_inbound = 0
        self._stopping = False
        self.dropped_outbound = 0
        self._outbound_dropped = 0  # since the last report
        self._outbound_limit = outbound_limit
        self._outstanding = 0  # published and not yet acknowledged (the loop adds, paho's thread subtracts)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_problem: str | None = None
        self.connected = False
        self._client = new_client(settings, client_id)
        self._client.max_queued_messages_set(outbound_limit + RETAINED_RESERVE)
        self._client.on_publish = self._paho_published
        self._client.will_set(will.topic, will.payload, qos=1, retain=True)
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_connect_fail = self._paho_connect_fail
        self._client.on_message = self._paho_message

    # paho's network thread -------------------------------------------------------------------------

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    def _paho_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._hand_over(self._problem, f"the broker refused the connection: {reason}")
            return
        # retainAsPublished: a retained say is recognised (and refused) even when it arrives live.
        options = SubscribeOptions(
            qos=1, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
        )
        client.subscribe([(topic, options) for topic in self._subscriptions])
        self._hand_over(self._connected)

    def _paho_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._hand_over(self._disconnected, str(reason))

    def _paho_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` block: the exception says why.
        reason = sys.exc_info()[1]
        s = self._settings
        why = f": {reason}" if reason is not None else ""
        retry = f"retrying every {s.reconnect_min_delay}-{s.reconnect_max_delay} s"
        self._hand_over(self._problem, f"cannot reach the broker at {s.host}:{s.port}{why}; {retry}")

    def _paho_published(self, client: paho.Client, *args: Any) -> None:
        with self._lock:
            self._outstanding -= 1
        acknowledge_now(client, *args)

    def _paho_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:  # bounded: a flood, or a stalled loop, must not grow memory without limit
            if self._inbound_pending >= self._inbound_limit:
                self._inbound_dropped += 1
                self.dropped_inbound += 1
                return
            self._inbound_pending += 1
        self._hand_over(self._deliver, Inbound(message.topic, bytes(message.payload), bool(message.retain)))

    # the event loop --------------------------------------------------------------------------------

    def _deliver(self, message: Inbound) -> None:
        with self._lock:
            self._inbound_pending -= 1
            dropped, self._inbound_dropped = self._inbound_dropped, 0
        if dropped:
            self._on_dropped(
                f"{dropped} inbound messages were dropped: more than {self._inbound_limit} waited to be handled"
            )
        self._on_message(message)

    def _connected(self) -> None:
        self.connected = True
        LOG.info("connected to the broker at %s:%d", self._settings.host, self._settings.port)
        self._last_problem = None
        self._on_connected()

    def _disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        if self._stopping:
            LOG.info("disconnected from the broker")
        elif was:
            self._problem(f"lost the broker connection ({reason}); reconnecting")

    def _problem(self, message: str) -> None:
        if message != self._last_problem:  # one log line per distinct problem, not one per retry
            LOG.warning("%s", message)
            self._last_problem = message
            self._on_problem(message)

    @property
    def outstanding(self) -> int:
        """Messages published and not yet acknowledged by the broker."""
        with self._lock:
            return self._outstanding

    def subscribe(self, topics: list[str]) -> None:
        """The topic filters to subscribe to on every connect (set before `start`)."""
        self._subscriptions = list(dict.fromkeys(topics))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        persistent = self._settings.session_expiry > 0
        self._client.connect_async(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive,
            clean_start=not persistent,
            properties=connect_properties(self._settings.session_expiry),
        )
        self._client.loop_start()

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 1) -> None:
        """Queue a message; paho sends it now, or after the reconnect when the broker is away (QoS 1).
        Past OUTBOUND_LIMIT waiting messages it is dropped, counted and logged (once per run of drops)."""
        if not retain and self._outstanding >= self._outbound_limit:
            rc = paho.MQTT_ERR_QUEUE_SIZE  # the rest is kept for retained messages
        else:
            rc = self._client.publish(topic, payload, qos=qos, retain=retain).rc
        if rc in QUEUED:
            with self._lock:
                self._outstanding += 1
            if self._outbound_dropped:
                LOG.warning("%d outgoing messages were dropped while paho's queue was full", self._outbound_dropped)
                self._outbound_dropped = 0
            return
        self.dropped_outbound += 1
        self._outbound_dropped += 1
        if self._outbound_dropped == 1:
            LOG.warning("dropping outgoing messages (%s), the first on %s", paho.error_string(rc), topic)

    async def stop(self, last_words: tuple[str, str] | None = None) -> None:
        """Publish `last_words` (topic, payload, retained) if connected, then disconnect cleanly."""
        self._stopping = True  # the disconnection that follows is ours, not a lost connection
        if last_words is not None and self.connected:
            info = self._client.publish(last_words[0], last_words[1], qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, 1.5)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
