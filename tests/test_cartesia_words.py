"""Where speech stopped, from Cartesia's word timestamps: the part of a segment's text spoken whole."""

from __future__ import annotations

import pytest

from mqtt_speaker.engines.cartesia import spoken_prefix

TEXT = "Second part, wherever it comes from."


@pytest.mark.parametrize(
    ("text", "words", "spoken"),
    [
        (TEXT, [], ""),
        (TEXT, ["Second", "part,"], "Second part,"),
        (TEXT, ["Second", "part"], "Second part"),  # timestamps without the punctuation
        (TEXT, ["Second", "part,", "wherever", "it", "comes", "from."], TEXT),
        ("It is 10 degrees.", ["It", "is", "ten", "degrees."], "It is"),  # spelled out: stop before it
        ("a b c", ["a", "c"], "a"),  # a word missing: never skip past it
        ("one, two", ["one", "two"], "one, two"),  # punctuation between words is passed over
    ],
)
def test_spoken_prefix(text: str, words: list[str], spoken: str) -> None:
    assert text[: spoken_prefix(text, words)] == spoken
