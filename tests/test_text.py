"""Text as a stream (LiveText, Script): where pieces are cut, and where a fallback goes on."""

from __future__ import annotations

import asyncio

import pytest

from mqtt_speaker.speech.text import LiveText, Piece, Position, Script, sentence_end, words_end
from mqtt_speaker.speech.vocabulary import SayRequest, Segment

NEUTRAL = Segment(text="")
ANGRY = Segment(text="", emotion="angry")


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("Hello there. How", len("Hello there. ")),
        ("Hello there.", len("Hello there.")),  # the period has come: the space will come with the next word
        ("It costs 3.", 0),  # may go on as 3.14
        ("Ask Mr. Smith", 0),
        ("One e.g. two", 0),
        ("Wait!  Then", len("Wait!  ")),
        ('She said "go." Then', len('She said "go." ')),
        ("No end yet", 0),
    ],
)
def test_sentence_end(text: str, cut: int) -> None:
    assert sentence_end(text) == cut


def test_words_end_keeps_an_unfinished_word_and_the_space_before_it() -> None:
    assert words_end(" The washing machine fin") == len(" The washing machine")
    assert words_end(" two words") == 0
    assert words_end(" three whole words ") == len(" three whole words ")


async def collect(text: LiveText, feed: list[tuple[str, Segment] | None], continuations: bool) -> list[Piece]:
    """Feed `text` step by step (None ends it), letting the reader run between steps."""
    pieces: list[Piece] = []

    async def read() -> None:
        async for piece in text.pieces(continuations=continuations):
            pieces.append(piece)

    reader = asyncio.create_task(read())
    for step in feed:
        if step is None:
            text.end()
        else:
            text.append(*step)
        for _ in range(3):
            await asyncio.sleep(0)
    await asyncio.wait_for(reader, 5)
    return pieces


def test_a_stream_is_cut_at_sentence_ends_and_an_emotion_change_closes_the_run() -> None:
    feed: list[tuple[str, Segment] | None] = [
        ("Well maybe ", NEUTRAL),
        ("if you just. Then", NEUTRAL),
        (" loosen up!", ANGRY),
        None,
    ]
    pieces = asyncio.run(collect(LiveText(), feed, continuations=False))
    assert [(p.segment, p.offset, p.text, p.closes) for p in pieces] == [
        (0, 0, "Well maybe if you just. ", False),
        (0, 24, "Then", True),
        (1, 0, " loosen up!", False),  # spoken at its sentence end, before the stream's end came
        (1, 11, "", True),
    ]


def test_with_continuations_whole_words_follow_the_first_sentence() -> None:
    feed: list[tuple[str, Segment] | None] = [
        (word, NEUTRAL) for word in ["Good", " morning.", " The", " washing", " machine", " finished", " at", " ten."]
    ]
    pieces = asyncio.run(collect(LiveText(), [*feed, None], continuations=True))
    assert [p.text for p in pieces] == ["Good morning.", " The washing machine", " finished at ten.", ""]
    assert [p.closes for p in pieces] == [False, False, False, True]


def test_a_complete_text_is_one_piece_per_segment() -> None:
    segments = (Segment(text="First part. Still first."), Segment(text="Angry part.", emotion="angry"))
    text = LiveText.complete(segments)
    pieces = asyncio.run(collect(text, [], continuations=True))
    assert [(p.text, p.voice.emotion, p.closes) for p in pieces] == [
        ("First part. Still first.", None, True),
        ("Angry part.", "angry", True),
    ]
    assert text.segments() == segments


def test_the_rest_starts_at_the_first_word_not_heard_and_skips_a_run_left_with_punctuation() -> None:
    request = SayRequest(id="r", segments=(Segment(text="One, two"), Segment(text="Three, ..."), Segment(text="Four")))
    script = Script.of(request)
    rest = script.rest(0, len("One,"))
    assert rest is not None and rest.start == Position(0, len("One, "))
    assert rest.segments[0].text == "two"
    after = script.rest(1, len("Three,"))
    assert after is not None and after.start == Position(2, 0)
    assert script.rest(2, len("Four")) is None


def test_the_rest_of_a_stream_still_being_written_waits_for_more() -> None:
    text = LiveText()
    text.append("Said. Not yet", NEUTRAL)
    rest = Script(SayRequest(id="s", segments=(NEUTRAL,)), text).rest(0, len("Said. Not yet"))
    assert rest is not None and rest.start == Position(0, len("Said. Not yet"))
