"""The emotion and language lists kept in the project match the Cartesia SDK's (they are kept here so
that a speaker without Cartesia never imports the SDK)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import get_args

from cartesia.types import Emotion, SupportedLanguage

from mqtt_speaker.speech.emotions import EMOTIONS, LANGUAGES


def test_emotions_match_the_sdk() -> None:
    assert get_args(Emotion) == EMOTIONS


def test_languages_match_the_sdk() -> None:
    literal, *_ = get_args(SupportedLanguage)
    assert get_args(literal) == LANGUAGES


def test_the_daemon_without_cartesia_does_not_import_the_sdk() -> None:
    code = (
        "import sys; from mqtt_speaker.settings import Settings; from mqtt_speaker.daemon import build_engines; "
        "build_engines(Settings(engine='espeak', fallback=[])); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cartesia', 'httpx', 'anyio')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
