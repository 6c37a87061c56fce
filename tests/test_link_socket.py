"""The MQTT core's socket: no small-packet delays (the latency promise starts at the broker)."""

from __future__ import annotations

import socket
import threading

from paho.mqtt.client import Client

from mqtt_speaker.protocol.link import new_client
from mqtt_speaker.settings import MqttSettings
from tests.conftest import Broker


def connected_client(broker: Broker) -> Client:
    client = new_client(MqttSettings(host="127.0.0.1", port=broker.port), "socket-test")
    ready = threading.Event()
    client.on_connect = lambda *_: ready.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert ready.wait(10), "no CONNACK"
    return client


def test_nagle_is_off_and_an_acknowledged_publish_is_acked_at_once(broker: Broker) -> None:
    client = connected_client(broker)
    try:
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        for n in range(3):
            client.publish("mqtt-speaker/socket-test/event", f"{n}", qos=1).wait_for_publish(10)
            # Quick-ACK mode (no delayed ACK) holds after the broker's PUBACK came in.
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    finally:
        client.disconnect()
        client.loop_stop()
