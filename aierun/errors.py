"""Errors a user can cause and fix, and the one place that decides what the user sees
for any failure: one paragraph (what was wrong, which file or flag, what to do) and
an exit code. `aierun` (cli.main) and the doit tasks (aiebuild.tasks) both use
`describe`, so the two front doors report a failure the same way.
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass

EXIT_USER = 2  # bad input or environment: the message says what to do
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports after Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports when the reader went away


class UserError(Exception):
    """Bad input or a missing prerequisite: the message says what was wrong and what to do."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGHUP): it ends as after Ctrl-C (the
    output line ended, one message), with the shell's code for that signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class DeviceError(RuntimeError):
    """The device (emulated or real) refused or failed a call."""


@dataclass(frozen=True)
class Failure:
    code: int
    message: str | None  # None: say nothing (stdout's reader has gone)


# What each class of operating-system error means for the user and what to do about it.
_FULL = "free some space there (or move the runtime home: AIERUN_HOME for aierun, " \
    "AIE_BUILD_DIR for doit) and run again"  # fmt: skip
_DENIED = "make it writable for you, or use another directory (AIERUN_HOME for aierun, " \
    "AIE_BUILD_DIR for doit)"  # fmt: skip
_OS_ADVICE = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EACCES: _DENIED,
    errno.EPERM: _DENIED,
    errno.EROFS: _DENIED,
    errno.ENOTDIR: "a part of that path is a file where a directory is needed: move the file "
    "away or point the setting to a directory",
    errno.EEXIST: "a file is in the way where a directory is needed: move it away or point "
    "the setting to a directory",
    errno.EISDIR: "it is a directory where a file is needed: pass a file",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def describe(exc: BaseException) -> Failure | None:
    """What the user sees for `exc`; None for a bug, which keeps its traceback."""
    if isinstance(exc, UserError | DeviceError):
        return Failure(EXIT_USER, str(exc))
    if isinstance(exc, Terminated):
        name = signal.Signals(exc.signum).name
        return Failure(128 + exc.signum, f"stopped by {name}. Nothing half-written is kept: "
                       "the next run starts clean.")  # fmt: skip
    if isinstance(exc, KeyboardInterrupt):
        return Failure(EXIT_INTERRUPTED, "interrupted (Ctrl-C). Nothing half-written is kept: "
                       "the next run starts clean.")  # fmt: skip
    if isinstance(exc, BrokenPipeError):
        return Failure(EXIT_BROKEN_PIPE, None)
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        return Failure(EXIT_USER, os_error_message(exc))
    return None


STDOUT = "standard output"  # the file name of a failed write of the answer


def os_error_message(exc: OSError) -> str:
    """`cannot use <file>: <reason>. <what to do>.` for an operating-system error."""
    where = exc.filename if exc.filename is not None else "a file"
    if exc.errno == errno.ENOSPC and exc.filename2 is not None:
        where = exc.filename2  # a copy's source is named first; the destination is full
    reason = exc.strerror or str(exc)
    if where == STDOUT:
        advice = "free some space where it goes, or send it to another file or a terminal"
    else:
        advice = _OS_ADVICE.get(exc.errno, "check it")
    return f"cannot use {where}: {reason}; {advice}."
