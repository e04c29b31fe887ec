"""Verification against Hugging Face transformers: the reference model
(`reference`), the top-k gate of `aierun verify` (`gate`) and the per-layer
comparison of `aierun diagnosis` (`diagnosis`); both commands write their result
JSON the same way (below)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import structlog

from aierun.files import write_json_atomic
from aierun.session import Session

log = structlog.get_logger("aierun.verify")


def run_info(args: argparse.Namespace, session: Session) -> dict[str, Any]:
    return {"device": args.device, "model": session.checkpoint.name}


def write_result(path: str, data: dict[str, Any]) -> None:
    target = Path(path).expanduser()
    write_json_atomic(target, data)
    log.info("json.written", path=str(target))
