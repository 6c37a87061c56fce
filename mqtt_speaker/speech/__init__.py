"""The ground floor: the words every part shares (a request, its text as a stream, audio chunks, events,
state, error codes, emotions, engine names). No I/O, no JSON, no MQTT, no sound device."""
