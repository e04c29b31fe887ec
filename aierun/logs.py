"""structlog, configured once: readable lines on stderr, JSON lines in a file.

Every event (compile, artifact load, preload, prefill, tokens, verify) goes
through here; stdout stays free for results.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import structlog

_configured = False


def configure(log_dir: Path | None, level: str | None = None) -> Path | None:
    """Set up logging for this process; returns the JSON-lines file, if any."""
    global _configured
    level = (level or os.environ.get("AIERUN_LOG_LEVEL", "INFO")).upper()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    if not _configured:
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            cache_logger_on_first_use=True,
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_aierun", False):
            root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(
        _formatter(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()), shared)
    )
    _own(root, console)
    json_file = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        json_file = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
        file_handler = logging.FileHandler(json_file)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer(), shared))
        _own(root, file_handler)
    # Third-party chatter stays out of the console unless asked for.
    for noisy in ("transformers", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True
    return json_file


def _formatter(renderer, shared) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )


def _own(root: logging.Logger, handler: logging.Handler) -> None:
    handler._aierun = True  # type: ignore[attr-defined]
    root.addHandler(handler)
