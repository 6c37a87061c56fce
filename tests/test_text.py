"""Text as a stream (LiveText, Script): where pieces are cut, and where a fallback goes on."""

from __future__ import annotations

import asyncio

import pytest

from mqtt_speaker.speech.emotions import LANGUAGES
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


# Every language Cartesia speaks: its first sentence as a writer sends it (Chinese, Japanese and the danda
# with no space after), and the start of the next one.
SENTENCES = {
    "en": ("It is raining. ", "Take an umbrella"),
    "fr": ("Il pleut ! ", "Prends un parapluie"),
    "de": ("Es regnet, z.B. hier. ", "Nimm einen Schirm"),
    "es": ("¿Llueve hoy? ", "Toma un paraguas"),
    "pt": ("Está chovendo. ", "Leve um guarda-chuva"),
    "zh": ("今天下雨。", "带上雨伞"),
    "ja": ("今日は雨です。", "傘を持って"),
    "hi": ("आज बारिश हो रही है।", "छाता ले लो"),
    "it": ("Piove. ", "Prendi l'ombrello"),
    "ko": ("비가 와요. ", "우산을 가져가세요"),
    "nl": ("Het regent. ", "Neem een paraplu"),
    "pl": ("Pada deszcz. ", "Weź parasol"),
    "ru": ("Идёт дождь. ", "Возьми зонт"),
    "sv": ("Det regnar. ", "Ta ett paraply"),
    "tr": ("Yağmur yağıyor. ", "Şemsiye al"),  # noqa: RUF001 - Turkish has a dotless i
    "tl": ("Umuulan. ", "Magdala ka ng payong"),
    "bg": ("Вали дъжд. ", "Вземи чадър"),
    "ro": ("Plouă. ", "Ia o umbrelă"),
    "ar": ("هل تمطر؟ ", "خذ مظلة"),
    "cs": ("Prší. ", "Vezmi si deštník"),
    "el": ("Βρέχει; ", "Πάρε ομπρέλα"),
    "fi": ("Sataa. ", "Ota sateenvarjo"),
    "hr": ("Pada kiša. ", "Uzmi kišobran"),
    "ms": ("Hujan turun. ", "Bawa payung"),
    "sk": ("Prší. ", "Vezmi si dáždnik"),
    "da": ("Det regner. ", "Tag en paraply"),
    "ta": ("மழை பெய்கிறது. ", "குடையை எடுத்துக்கொள்"),
    "uk": ("Іде дощ. ", "Візьми парасольку"),
    "hu": ("Esik az eső. ", "Vigyél esernyőt"),
    "no": ("Det regner. ", "Ta med paraply"),
    "vi": ("Trời đang mưa. ", "Mang theo ô"),
    "bn": ("বৃষ্টি হচ্ছে। ", "ছাতা নাও"),
    "th": ("ฝนตกหนัก ", "เอาร่มไปด้วย"),
    "he": ("יורד גשם. ", "קח מטרייה"),
    "ka": ("წვიმს. ", "აიღე ქოლგა"),
    "id": ("Hujan turun. ", "Bawa payung"),
    "te": ("వర్షం పడుతోంది. ", "గొడుగు తీసుకో"),
    "gu": ("વરસાદ પડે છે. ", "છત્રી લઈ લો"),
    "kn": ("ಮಳೆ ಬರುತ್ತಿದೆ. ", "ಕೊಡೆ ತೆಗೆದುಕೊ"),
    "ml": ("മഴ പെയ്യുന്നു. ", "കുട എടുക്കൂ"),
    "mr": ("पाऊस पडत आहे. ", "छत्री घे"),
    "pa": ("ਮੀਂਹ ਪੈ ਰਿਹਾ ਹੈ। ", "ਛਤਰੀ ਲੈ ਲਓ"),
    "or": ("ବର୍ଷା ହେଉଛି। ", "ଛତା ନିଅ"),
    "ur": ("بارش ہو رہی ہے۔ ", "چھتری لے لو"),  # noqa: RUF001 - the Urdu full stop
}


def test_every_language_has_a_sample() -> None:
    assert set(SENTENCES) == set(LANGUAGES)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_sentence_ends_where_it_ends_in_every_language(language: str) -> None:
    first, following = SENTENCES[language]
    assert sentence_end(first + following) == len(first)
    assert sentence_end(first) == len(first)  # the end has come: speech need not wait for the next sentence
    assert sentence_end(first + following[:2]) == len(first)


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("今日は雨です。傘を持って", len("今日は雨です。")),
        ("本当!すごい", len("本当!")),  # a half-width mark before a Japanese character: no space in Japanese
        ("「行こう。」と言った", len("「行こう。」")),
        ("आज बारिश है।कल", len("आज बारिश है।")),
        ("It is 3。", len("It is 3。")),  # only a full stop after a digit may go on (3.14)
        ("Visit example.com. Later", 0),  # a word with a stop inside may be an abbreviation: held
        ("Wait… what", len("Wait… ")),
        ("I came; I saw", 0),  # a semicolon ends a sentence only in Greek
        ("Es ist ca. drei Uhr", 0),
    ],
)
def test_sentence_ends_without_a_space(text: str, cut: int) -> None:
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


@pytest.mark.parametrize("blank", ["   ", "...", " ... \n\n ", "!?"])
def test_a_run_with_nothing_to_speak_is_never_given_to_an_engine(blank: str) -> None:
    text = LiveText()
    pieces = asyncio.run(collect(text, [(blank, NEUTRAL), (blank, NEUTRAL), None], continuations=True))
    assert pieces == []


def test_a_run_that_begins_with_punctuation_is_given_once_it_has_words() -> None:
    text = LiveText()
    pieces = asyncio.run(collect(text, [("... ", NEUTRAL), ("Well. ", NEUTRAL), ("And", NEUTRAL), None], False))
    assert [(p.text, p.closes) for p in pieces] == [("... Well. ", False), ("And", True)]


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
