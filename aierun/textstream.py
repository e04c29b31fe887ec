"""Tokens to printable text as they come (run, chat and the server stream it)."""

from __future__ import annotations

from typing import Any


class TextStream:
    """Turns tokens into printable text as they come. The whole answer so far is
    detokenized each time (a token alone may not decode to the same characters),
    and a trailing incomplete character (U+FFFD while its bytes are split over
    tokens) is held back until it is complete."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.shown = ""

    def push(self, token: int) -> str:
        self.tokens.append(token)
        return self._advance(self._decoded().rstrip("\ufffd"))

    def finish(self) -> str:
        return self._advance(self._decoded())

    def _decoded(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _advance(self, text: str) -> str:
        new = text[len(self.shown) :] if len(text) > len(self.shown) else ""
        self.shown = max(self.shown, text, key=len)
        return new


class StopFilter:
    """Ends a text stream at the first of its stop strings (OpenAI's `stop`), which
    is not shown. Text that could be the start of a stop string is held back until
    the next piece shows whether it is one, so a stop split over tokens is found."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that may be shown now, and whether a stop string was reached."""
        self.pending += text
        hits = [i for stop in self.stops if (i := self.pending.find(stop)) >= 0]
        if hits:
            shown, self.pending = self.pending[: min(hits)], ""
            return shown, True
        hold = max(
            (
                k
                for stop in self.stops
                for k in range(1, len(stop))
                if self.pending.endswith(stop[:k])
            ),
            default=0,
        )
        cut = len(self.pending) - hold
        shown, self.pending = self.pending[:cut], self.pending[cut:]
        return shown, False

    def flush(self) -> str:
        """What was held back, at the end of the stream (no stop followed it)."""
        shown, self.pending = self.pending, ""
        return shown
