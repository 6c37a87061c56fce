"""The top floor's ways in and out: MQTT (the link, the topic layout, JSON payloads) and the adapters that
turn messages into the speaker's calls and its events and state into messages."""
