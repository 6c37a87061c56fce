"""Where what the core says goes: events of requests, errors, and that the state changed. The daemon hands
each to every protocol adapter."""

from __future__ import annotations

from typing import Protocol

from mqtt_speaker.speech.vocabulary import ErrorReport, Event


class Listener(Protocol):
    def on_event(self, event: Event) -> None:
        """A request's lifecycle event (queued, started, one terminal event)."""

    def on_error(self, error: ErrorReport) -> None:
        """A problem, tied to a request or not (also warnings)."""

    def on_change(self) -> None:
        """Something the state shows changed (it is read again: Speaker.state)."""
