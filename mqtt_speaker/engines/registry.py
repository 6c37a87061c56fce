"""The one place that knows the speech engines: their names and how each is built.

The engine modules are imported only when an engine is built (Cartesia's SDK and Piper are heavy).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mqtt_speaker.engines.base import Engine
    from mqtt_speaker.settings import Settings

EngineName = Literal["cartesia", "piper", "espeak"]


class EngineChoice(StrEnum):
    """The `engine` setting: one of the engines, or auto (Cartesia with a key, else Piper, else espeak-ng)."""

    AUTO = "auto"
    CARTESIA = "cartesia"
    PIPER = "piper"
    ESPEAK = "espeak"


def build_engines(settings: Settings) -> dict[str, Engine]:
    """The primary engine and the installed fallbacks, in that order (Cartesia only with an API key or
    when chosen; Piper only with a voice model or when chosen)."""
    engines: dict[str, Engine] = {}
    for name in dict.fromkeys([settings.primary_engine, *settings.fallback]):
        if name == "cartesia" and (settings.has_api_key or settings.primary_engine == "cartesia"):
            from mqtt_speaker.engines.cartesia import CartesiaEngine

            engines[name] = CartesiaEngine(settings.cartesia)
        elif name == "piper" and (settings.piper.installed or settings.primary_engine == "piper"):
            from mqtt_speaker.engines.piper import PiperEngine

            engines[name] = PiperEngine(settings.piper)
        elif name == "espeak":
            from mqtt_speaker.engines.espeak import EspeakEngine

            engines[name] = EspeakEngine(settings.espeak)
    return engines
