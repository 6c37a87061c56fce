"""mqtt-speaker: speak MQTT messages aloud, with emotion, as they stream in."""

__version__ = "0.1.0"
