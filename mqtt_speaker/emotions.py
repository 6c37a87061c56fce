"""Cartesia's emotion vocabulary, taken from the official SDK so it never drifts from it."""

from typing import get_args

from cartesia.types import Emotion

EMOTIONS: tuple[str, ...] = tuple(get_args(Emotion))
"""The 58 values `generation_config.emotion` accepts, in the SDK's order."""
