"""Text as a stream: what every request is made of, and how engines read it.

A request's text is a `LiveText`: runs of text (one per set of voice settings: emotion, speed,
generation volume) that grow as chunks arrive, until the text is ended. A plain say is a LiveText that
is complete when it arrives; a streamed say grows chunk by chunk. Engines read it with `pieces()`:
whole sentences as soon as their end has arrived (then, for an engine that continues prosody across
pieces, whole words as they come), and each run's rest when the run is complete, so speech starts at
the first sentence and never in the middle of a word.
"""

from __future__ import annotations

import asyncio
import re
import string
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from mqtt_speaker.speech.vocabulary import SayRequest, Segment

# Where a sentence ends, in every language Cartesia speaks (speech/emotions.py's LANGUAGES):
# - at . ! ? or … (and any closing quotes or brackets) followed by white space, as in Latin, Cyrillic,
#   Greek, Hebrew, Georgian, Korean and the scripts of South India; or followed at once by a Chinese,
#   Japanese or Korean character (those scripts put no space after a sentence);
# - at a mark that ends a sentence by itself, space or none: the ideographic full stop and the full-width
#   ! ? . of Chinese and Japanese (。 U+FF61 U+FF01 U+FF1F U+FF0E), the danda of Hindi, Marathi, Bengali,
#   Punjabi and Odia (। ॥), the Arabic question mark (؟) and the Urdu full stop (U+06D4), the Greek
#   question mark (; after a Greek letter, or U+037E), and ‼ ⁇ ⁈ ⁉ ‽;
# - in Thai, which has no sentence punctuation, at a space between two Thai letters;
# - at a blank line.
# At the very end of the text so far the punctuation alone counts (a writer sends the space with the next
# word), unless a digit comes before a full stop ("3." may go on as "3.14").
_CLOSERS = "\"')\\]\u2019\u201d\u00bb\u300d\u300f\u3011\u3015\u3009\u300b\uff09\uff3d\uff02"
_CJK = "\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_BY_ITSELF = "\u3002\uff61\uff01\uff1f\uff0e\u0964\u0965\u061f\u06d4\u037e\u203c\u2047\u2048\u2049\u203d"
_GREEK = "\u0370-\u03ff\u1f00-\u1fff"
_THAI = "\u0e01-\u0e5b"
_BOUNDARY = re.compile(
    f"(?:[.!?\u2026]+|(?<=[{_GREEK}]);)[{_CLOSERS}]*(?:\\s+|$|(?=[{_CJK}]))"
    f"|[{_BY_ITSELF}]+[.!?\u2026{_BY_ITSELF}]*[{_CLOSERS}]*\\s*"
    f"|(?<=[{_THAI}])\\s+(?=[{_THAI}]|$)"
    "|\\n\\s*\\n"
)
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st prof sr jr vs etc e.g i.e approx no fig "  # English
    "bzw ca usw vgl nr hr str "  # German
    "mme mlle "  # French
    "sra srta ud uds "  # Spanish
    "sig dott "  # Italian
    "dhr mevr".split()  # Dutch
)
CLAUSE_MARKS = string.whitespace + ",;:.!?\u2026\u3001\uff0c" + _BY_ITSELF
MIN_WORDS = 3  # after the first sentence, a continuation carries at least this many whole words
MAX_HELD = 300  # characters without a sentence end: pushed up to the last space rather than held on


@dataclass(frozen=True)
class Position:
    """Where in a request's text an engine starts: a run and a character offset in it."""

    segment: int = 0
    offset: int = 0


@dataclass(frozen=True)
class Piece:
    """Text for an engine: `text` of run `segment` starting at `offset`, spoken with `voice`'s
    settings. `closes`: nothing more of this run will follow (the engine may end its context)."""

    segment: int
    offset: int
    text: str
    voice: Segment
    closes: bool


NOTHING_TO_SPEAK = "nothing to speak (only white space and punctuation)"


def speakable(text: str) -> bool:
    """Something in `text` can be spoken: a letter, a digit or a symbol (an emoji, a currency sign), not
    only white space and punctuation."""
    return any(unicodedata.category(char)[0] in "LNS" for char in text)


def sentence_end(text: str) -> int:
    """The length of the longest prefix of `text` that ends at a sentence boundary (0: none yet)."""
    cut = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        head = text[: match.start()]
        word = head.rsplit(None, 1)[-1].lower() if head.strip() else ""
        stop = match.group()[0] == "."
        if stop and _abbreviation(word):
            continue
        if stop and end == len(text) and not match.group()[-1].isspace() and head[-1:].isdigit():
            continue
        cut = end
    return cut


def _abbreviation(word: str) -> bool:
    """A word that a full stop ends without ending the sentence: a known abbreviation, a single letter (an
    initial), or one with a stop inside ("z.B.", "U.S.")."""
    word = word.rstrip(".")
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or "." in word


def words_end(text: str) -> int:
    """The length of the prefix of `text` made of whole words, if there are MIN_WORDS of them (else 0).
    A word is whole once white space follows it; the space before the next word stays with that word."""
    cut = len(text) if text[-1:].isspace() else max(text.rfind(" "), text.rfind("\n"))
    return cut if cut > 0 and len(text[:cut].split()) >= MIN_WORDS else 0


def hold_point(text: str) -> int:
    """Where to cut a run that has gone on too long without a sentence end: after its last space."""
    if len(text) < MAX_HELD:
        return 0
    space = max(text.rfind(" "), text.rfind("\n"))
    return space + 1 if space > 0 else len(text)


@dataclass
class _Run:
    voice: Segment
    text: str = ""


@dataclass
class LiveText:
    """The text of one request as it arrives (event loop only)."""

    runs: list[_Run] = field(default_factory=list)
    ended: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def complete(cls, segments: Sequence[Segment]) -> LiveText:
        text = cls(runs=[_Run(segment.model_copy(update={"text": ""}), segment.text) for segment in segments])
        text.ended = True
        return text

    @property
    def length(self) -> int:
        return sum(len(run.text) for run in self.runs)

    @property
    def whole(self) -> str:
        """The text so far, every run's."""
        return "".join(run.text for run in self.runs)

    def segments(self) -> tuple[Segment, ...]:
        """The text so far as segments (a run's text with its settings)."""
        return tuple(run.voice.model_copy(update={"text": run.text}) for run in self.runs)

    def append(self, text: str, voice: Segment) -> None:
        """More text, spoken with `voice`'s settings (a new run when they differ from the last one's)."""
        if self.ended:
            raise ValueError("the text has ended")
        if not self.runs or self.runs[-1].voice != voice:
            self.runs.append(_Run(voice))
        self.runs[-1].text += text
        self._notify()

    def end(self) -> None:
        self.ended = True
        self._notify()

    def _notify(self) -> None:
        """Wake every reader waiting for more (each waits on the event current when it started)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def pieces(self, start: Position = Position(), *, continuations: bool = False) -> AsyncIterator[Piece]:
        """The text from `start` on, as it becomes speakable: a run's first piece ends at a sentence end;
        after it, for an engine that continues a run's prosody across pieces (`continuations`), whole
        words as they arrive (MIN_WORDS at least), otherwise sentence by sentence."""
        segment, offset = start.segment, start.offset
        opened = False  # a piece of this run has been given (so its end must be given too)
        while True:
            changed = self._changed
            if segment >= len(self.runs):
                if self.ended:
                    return
                await changed.wait()
                continue
            run = self.runs[segment]
            rest = run.text[offset:]
            if segment < len(self.runs) - 1 or self.ended:  # the run is complete
                if opened or speakable(rest):
                    yield Piece(segment, offset, rest, run.voice, closes=True)
                segment, offset, opened = segment + 1, 0, False
                continue
            cut = sentence_end(rest) or hold_point(rest) or (continuations and opened and words_end(rest))
            if cut and (opened or speakable(rest[:cut])):  # a run never begins with nothing to say ("...")
                yield Piece(segment, offset, rest[:cut], run.voice, closes=False)
                offset, opened = offset + cut, True
                continue
            await changed.wait()


Meter = Callable[[Piece], None]


@dataclass(frozen=True)
class Script:
    """What an engine is asked to speak: a request's settings and its text from `start` on. `meter` is
    told of every piece before the engine gets it (the cost guard: it raises to refuse)."""

    request: SayRequest
    text: LiveText
    start: Position = Position()
    meter: Meter | None = None

    @classmethod
    def of(cls, request: SayRequest) -> Script:
        """A request whose text is complete (a plain say, a cache warm)."""
        return cls(request, LiveText.complete(request.segments))

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The text so far from `start` on, as segments."""
        first, *others = self.text.segments()[self.start.segment :] or (None,)
        if first is None:
            return ()
        return (first.model_copy(update={"text": first.text[self.start.offset :]}), *others)

    async def pieces(self, *, continuations: bool = False) -> AsyncIterator[Piece]:
        async for piece in self.text.pieces(self.start, continuations=continuations):
            if self.meter is not None:
                self.meter(piece)
            yield piece

    def rest(self, segment: int, spoken_chars: int) -> Script | None:
        """What is left after `spoken_chars` of run `segment` were heard; None if nothing is.
        The rest starts at the first word not heard; a run with only punctuation left is skipped."""
        if segment < self.start.segment:
            segment, spoken_chars = self.start.segment, self.start.offset
        runs = self.text.runs
        offset = spoken_chars
        if segment < len(runs):
            text = runs[segment].text
            while offset < len(text) and text[offset] in CLAUSE_MARKS:
                offset += 1
            complete = segment < len(runs) - 1 or self.text.ended
            if complete and not text[offset:].strip(string.punctuation + string.whitespace):
                segment, offset = segment + 1, 0
        if self.text.ended and segment >= len(runs):
            return None
        return replace(self, start=Position(segment, offset))
