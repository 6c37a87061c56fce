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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from mqtt_speaker.speech.vocabulary import SayRequest, Segment

# A sentence ends at . ! ? or … (and any closing quotes or brackets) followed by white space, or at a
# blank line. At the very end of the text so far the punctuation alone counts (a writer sends the space
# with the next word), unless a digit comes before it ("3." may go on as "3.14").
_BOUNDARY = re.compile(r"[.!?…]+[\"')\]\u2019\u201d\u00bb]*(?:\s+|$)|\n\s*\n")
_ABBREVIATIONS = frozenset("mr mrs ms dr st prof sr jr vs etc e.g i.e approx no fig".split())
CLAUSE_MARKS = string.whitespace + ",;:.!?"
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


def sentence_end(text: str) -> int:
    """The length of the longest prefix of `text` that ends at a sentence boundary (0: none yet)."""
    cut = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        head = text[: match.start()]
        word = head.rsplit(None, 1)[-1].lower() if head.strip() else ""
        if word.rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and match.group()[0] == "."):
            continue
        if end == len(text) and not match.group()[-1].isspace() and head[-1:].isdigit():
            continue
        cut = end
    return cut


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
                if rest or opened:
                    yield Piece(segment, offset, rest, run.voice, closes=True)
                segment, offset, opened = segment + 1, 0, False
                continue
            cut = sentence_end(rest) or hold_point(rest) or (continuations and opened and words_end(rest))
            if cut:
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
