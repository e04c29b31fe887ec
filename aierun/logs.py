"""structlog, configured once: readable lines on stderr, JSON lines in a file.

Every event (compile, artifact load, preload, prefill, tokens, verify) goes
through here; stdout stays free for results.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import structlog

from aierun.errors import UserError

T = TypeVar("T")
SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso"),
]
_console: logging.Handler | None = None
_json: logging.FileHandler | None = None


def configure(log_dir: Path | None, level: str | None = None) -> Path | None:
    """Set up logging for this process (again: only the console level changes and
    the JSON file stays, unless `log_dir` differs); returns the JSON-lines file."""
    global _console, _json
    level = (level or os.environ.get("AIERUN_LOG_LEVEL", "INFO")).upper()
    if level not in logging.getLevelNamesMapping():
        raise UserError(f"--log-level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    root = logging.getLogger()
    if _console is None:
        structlog.configure(
            processors=[*SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            cache_logger_on_first_use=True,
        )
        root.setLevel(logging.DEBUG)
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        _console = _handler(logging.StreamHandler(sys.stderr), renderer)
        # Third-party chatter stays out of the console unless asked for.
        for noisy in ("transformers", "urllib3", "filelock", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    _console.setLevel(level)
    if log_dir is not None and (_json is None or Path(_json.baseFilename).parent != log_dir):
        if _json is not None:
            root.removeHandler(_json)
            _json.close()
            _json = None
        _json = _open_file_handler(log_dir)
    return Path(_json.baseFilename) if _json is not None else None


class _LogFileHandler(logging.FileHandler):
    """The JSON-lines file is a record, not the work: when it cannot be written (a
    full disk, a read-only home) logging goes on to the console only, said once,
    instead of logging's traceback on every event."""

    def handleError(self, record: logging.LogRecord) -> None:
        global _json
        logging.getLogger().removeHandler(self)
        if _json is self:
            _json = None
        _warn_no_file(self.baseFilename, sys.exc_info()[1])


# Log files kept per folder: the oldest go when a run starts a new one.
KEEP_LOG_FILES = 50


def _open_file_handler(log_dir: Path) -> logging.FileHandler | None:
    """A new JSON-lines file for this run, readable by its owner only (prompts and
    answers are the user's business), in a folder of the owner's only."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
    try:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_old_logs(log_dir, KEEP_LOG_FILES - 1)
        os.close(os.open(log_dir / name, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
        handler = _LogFileHandler(log_dir / name, delay=False)
    except OSError as exc:
        _warn_no_file(str(log_dir / name), exc)
        return None
    return _handler(handler, structlog.processors.JSONRenderer())


def _remove_old_logs(log_dir: Path, keep: int) -> None:
    files = sorted(log_dir.glob("*.jsonl"), key=lambda f: f.stat().st_mtime)
    for old in files[: max(len(files) - keep, 0)]:
        old.unlink(missing_ok=True)


def _warn_no_file(path: str, exc: BaseException | None) -> None:
    reason = getattr(exc, "strerror", None) or exc
    print(f"aierun: warning: cannot write the log file {path} ({reason}); "
          "logging to the console only.", file=sys.stderr)  # fmt: skip


@contextmanager
def console_quiet() -> Iterator[None]:
    """Only warnings and errors on the console (the log file keeps everything):
    for interactive use, where log lines would interleave with the conversation."""
    if _console is None:
        yield
        return
    level = _console.level
    _console.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        _console.setLevel(level)


def _handler(handler: logging.Handler, renderer) -> logging.Handler:
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=SHARED,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    logging.getLogger().addHandler(handler)
    return handler


# A prefill of this many positions takes long enough (tens of seconds on emu) to
# deserve a progress bar even when stderr is not a terminal (a log being watched).
LONG_PREFILL = 1024


def progress(steps: Iterable[T], label: str, positions: int) -> Iterable[T]:
    """`steps` with a progress bar on stderr when someone may be waiting: stderr is a
    terminal or the work is long (`positions` at least LONG_PREFILL). Otherwise the
    steps as they are, so that short runs and pipelines print nothing extra."""
    if not (sys.stderr.isatty() or positions >= LONG_PREFILL):
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc=f"{label} ({positions} positions)", file=sys.stderr, leave=False)
