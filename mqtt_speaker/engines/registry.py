"""How the speech engines are built (their names are speech/vocabulary.py's EngineName).

The engine modules are imported only when an engine is built (Cartesia's SDK and Piper are heavy).
"""

from __future__ import annotations

from mqtt_speaker.engines.base import Engine
from mqtt_speaker.settings import Settings


def build_engines(settings: Settings) -> dict[str, Engine]:
    """The primary engine and the installed fallbacks, in that order (Cartesia only with an API key or
    when chosen; Piper only with a voice model or when chosen); and espeak-ng always, last when it is
    neither: it is always there, so a request that asks for it (`"engine": "espeak"`) gets it."""
    engines: dict[str, Engine] = {}
    for name in dict.fromkeys([settings.primary_engine, *settings.fallback, "espeak"]):
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


def unavailable(name: str) -> str:
    """Why engine `name` was not built here, for a request that asks for it."""
    if name == "cartesia":
        return "no Cartesia API key is configured"
    if name == "piper":
        return "no Piper voice is installed (the [piper] model setting, and the mqtt-speaker[piper] extra)"
    return "it is not installed"
