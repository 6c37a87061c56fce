"""The one interface of every way in and out of the speaker (the native MQTT topics, Home Assistant
discovery, ...): messages in, the speaker's events, errors and state out, started and stopped with the
daemon, which holds them in a list and hands each of them everything."""

from __future__ import annotations

from typing import Protocol

from mqtt_speaker.protocol.link import Inbound
from mqtt_speaker.speech.vocabulary import ErrorReport, Event, StateReport


class Adapter(Protocol):
    def subscriptions(self) -> list[str]:
        """The MQTT topic filters it takes messages from (subscribed again on every connect); [] for none."""
        ...

    def on_message(self, message: Inbound) -> bool:
        """A message on one of its topics: acted on, True; False when it is not one of its."""
        ...

    def on_connected(self) -> None:
        """The broker connection is (back) up: publish again what must be there (retained)."""

    def on_event(self, event: Event) -> None:
        """A request's lifecycle event."""

    def on_error(self, error: ErrorReport) -> None:
        """A problem the speaker, or an adapter, reported."""

    def on_state(self, state: StateReport) -> None:
        """The speaker's state, after it changed."""

    async def start(self) -> None:
        """Begin (listen, announce)."""

    async def stop(self) -> None:
        """Shutting down: take nothing new (events still go out until the link stops)."""


class BaseAdapter:
    """An adapter that takes part in nothing until it says otherwise."""

    def subscriptions(self) -> list[str]:
        return []

    def on_message(self, message: Inbound) -> bool:
        return False

    def on_connected(self) -> None:
        """Nothing is kept on the broker."""

    def on_event(self, event: Event) -> None:
        """Events are not its business."""

    def on_error(self, error: ErrorReport) -> None:
        """Errors are not its business."""

    def on_state(self, state: StateReport) -> None:
        """The state is not its business."""

    async def start(self) -> None:
        """Nothing to begin."""

    async def stop(self) -> None:
        """Nothing to stop."""
