"""`aierun profile`: one production run, then the seed's per-step report.

The run is `Session.generate`, the code path of `run`; the report
(`aierun.profiling.text`) goes to stdout as text, and its JSON, trace and HTML
(`aierun.profiling.html`) to files. Without --json / --trace / --html the three files
go to `<runtime home>/profiles/`, which is build/profiles/ under doit: both front
doors behave the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from aierun import paths
from aierun.errors import UserError
from aierun.files import write_atomic
from aierun.profiling.html import render_html
from aierun.profiling.profile_json import to_json
from aierun.profiling.recorder import Profiler
from aierun.profiling.report import Report, RunInfo, beats_floor
from aierun.profiling.roofline import device_rates, rates_cache, remeasure
from aierun.profiling.text import render_text
from aierun.profiling.trace import trace_events
from aierun.session import open_session

if TYPE_CHECKING:
    from aierun.host.sampling import Sampling
    from aierun.session import Session

log = structlog.get_logger("aierun.profiling.command")

OUTPUT_SUFFIXES = {"json": ".json", "trace": ".trace.json", "html": ".html"}


def output_paths(args: argparse.Namespace, stamp: str) -> dict[str, Path]:
    """Where the JSON, trace and HTML go: only the ones asked for with --json /
    --trace / --html, else all three as `<runtime home>/profiles/profile-<stamp>.*`
    (build/profiles/ under doit)."""
    asked = {kind: getattr(args, kind) for kind in OUTPUT_SUFFIXES if getattr(args, kind)}
    if asked:
        return {kind: Path(path).expanduser() for kind, path in asked.items()}
    default = paths.home() / "profiles" / f"profile-{stamp}"
    return {kind: default.with_name(default.name + suffix)
            for kind, suffix in OUTPUT_SUFFIXES.items()}  # fmt: skip


def run_profile(
    session: Session,
    prompt: str | Sequence[int],
    n_tokens: int,
    sampling: Sampling,
    seq_len: int | None,
) -> tuple[Report, list[int]]:
    """Generate with the production code path (`Session.generate`, as `run` does)
    and build the report from what the session's profiler recorded."""
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    session.warm_up()  # first calls of a bucket cost more: the profile is the steady state
    tokens = list(session.generate(prompt, n_tokens, sampling, seq_len))
    profiler = session.profiler
    prompt_tokens, bucket = session.last_prompt
    specs = {i: session.spec(i) for i in {k.elf for k in profiler.kernels}}
    info = RunInfo(
        session.device.name, session.checkpoint.name, prompt_tokens, bucket,
        len(tokens), session.shape.n_layers, load_avg,
    )  # fmt: skip
    report = Report.build(profiler, info, specs, device_rates(info.device, rates_cache()))
    if info.device == "emu" and beats_floor(report):  # rates measured while busy: again
        report = Report.build(profiler, info, specs, remeasure(rates_cache()))
    report.npu2_model_ms = {i: session.artifacts.npu2_model_ms(i) for i in specs}
    return report, tokens


def write_outputs(report: Report, targets: dict[str, Path]) -> None:
    render = {
        "json": lambda: json.dumps(to_json(report), indent=2),
        "trace": lambda: json.dumps(trace_events(report.profiler)),
        "html": lambda: render_html(report),
    }
    for kind, path in targets.items():
        try:
            write_atomic(path, render[kind]())
        except OSError as exc:
            raise UserError(
                f"could not write the profile {kind} to {path}: {exc.strerror or exc}. "
                f"Pass --{kind} with a writable path."
            ) from exc


def cmd_profile(args: argparse.Namespace) -> int:
    from aierun.host.sampling import Sampling

    profiler = Profiler()
    sampling = Sampling(args.temperature, args.top_p, args.seed)
    with open_session(args, profiler) as session:
        profiler.device = session.device.name
        report, tokens = run_profile(session, args.prompt, args.n_tokens, sampling, args.seq_len)
        text = session.checkpoint.tokenizer.decode(tokens, skip_special_tokens=True)
    print(f"generated: {text}", file=sys.stderr)
    sys.stdout.write(render_text(report))
    sys.stdout.flush()  # the report stands even if a file below cannot be written
    targets = output_paths(args, time.strftime("%Y%m%d-%H%M%S"))
    write_outputs(report, targets)
    for kind, path in targets.items():
        print(f"profile {kind}: {path}")
    log.info("profile.written", **{kind: str(path) for kind, path in targets.items()})
    return 0
