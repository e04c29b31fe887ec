"""What `aierun chat` reads: whole messages, typed or piped.

A terminal line is read by GNU readline when stdin is a terminal: line editing and
history, and no cut at 4095 characters (the kernel's limit for a line read in
canonical mode, which readline does not use); readline also takes a bracketed paste
of several lines as one message. A line holding only `\"\"\"` starts a multi-line
message, ended by the next such line, typed or piped. Blank lines are no message
(a paste may hold some); end of input (Ctrl-D) or `/bye` ends the chat.
"""

from __future__ import annotations

import sys
from typing import TextIO

from aierun.errors import UserError

MARKER = "> "
MORE = "... "
FENCE = '"""'
BYE = ("/bye", "/exit")
HELP = (
    'Type a message (a line of """ starts and ends a multi-line one); Ctrl-D or /bye ends the chat.'
)


class MessageReader:
    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.interactive = self.stdin.isatty()
        if self.interactive:
            import readline  # noqa: F401  (importing it is what gives input() line editing)

    def read(self) -> str | None:
        """The next message, or None when the chat ends."""
        while (line := self._line(MARKER)) is not None:
            text = line.strip()
            if text in BYE:
                return None
            if text == FENCE:
                text = self._block()
            if text:
                return text
        return None

    def _block(self) -> str:
        lines = []
        while (line := self._line(MORE)) is not None and line.strip() != FENCE:
            lines.append(line)
        return "\n".join(lines).strip()

    def _line(self, marker: str) -> str | None:
        try:
            if self.interactive:
                return self._typed(marker)
            line = self.stdin.readline()
        except UnicodeDecodeError as exc:
            raise UserError(
                f"the chat input (stdin) is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                "type or pipe UTF-8."
            ) from None
        return line.rstrip("\n") if line else None

    def _typed(self, marker: str) -> str | None:
        # readline draws the marker itself (so editing redraws it) on stdout; when
        # stdout is not the terminal it goes to stderr, keeping stdout to the answers.
        if not self.stdout.isatty():
            print(marker, end="", file=sys.stderr, flush=True)
            marker = ""
        try:
            return input(marker)
        except EOFError:
            return None
