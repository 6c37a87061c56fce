"""The ESPHome native API, served: Home Assistant's esphome integration adds the speaker as a device with a
media player (play media, announce, stop, volume, mute) and an assist satellite that announces, and
drives it through the same speaker as the MQTT topics do (docs/home-assistant.md).

identity (the device's name and MAC) · frames (plaintext and Noise framing) · messages (aioesphomeapi's
generated protobuf, loaded alone) · connection (one client) · server (listening, the bounds) · mdns (the
advertisement) · adapter (the speaker's side: requests, volume and mute, state).
"""
