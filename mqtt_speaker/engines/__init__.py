"""Text to PCM: Cartesia over its WebSocket, Piper and espeak-ng locally. Knows no MQTT and no device."""
