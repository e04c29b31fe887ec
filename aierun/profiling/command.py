"""`aierun profile`: one production run, then the seed's per-step report.

The run is `Session.generate`, the code path of `run`; the report
(`aierun.profiling.text`) goes to stdout as text, and its JSON, trace and HTML
(`aierun.profiling.html`) to files. Without --json / --trace / --html the three files
go to `<runtime home>/profiles/`, which is build/profiles/ under doit: both front
doors behave the same. `--compare A.json B.json` runs nothing: it sets two such JSONs
side by side (`aierun.profiling.compare`), printed and written as text and HTML.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from aierun import paths
from aierun.errors import UserError
from aierun.files import write_atomic
from aierun.profiling import compare
from aierun.profiling.compare import Comparison, load_run
from aierun.profiling.html import PERFETTO, render_html
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
COMPARE_SUFFIXES = {"text": ".txt", "html": ".html"}


def output_paths(
    args: argparse.Namespace,
    stamp: str,
    suffixes: dict[str, str] = OUTPUT_SUFFIXES,
    name: str = "profile",
) -> dict[str, Path]:
    """Where the files go: only the ones asked for with their flags (--json / --trace /
    --html), else all of them as `<runtime home>/profiles/<name>-<stamp>.*`
    (build/profiles/ under doit)."""
    asked = {kind: getattr(args, kind, None) for kind in suffixes}
    asked = {kind: path for kind, path in asked.items() if path}
    if asked:
        return {kind: Path(path).expanduser().absolute() for kind, path in asked.items()}
    default = paths.home() / "profiles" / f"{name}-{stamp}"
    return {kind: default.with_name(default.name + suffix) for kind, suffix in suffixes.items()}


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
    write_files(
        {
            "json": lambda: json.dumps(to_json(report), indent=2),
            "trace": lambda: json.dumps(trace_events(report.profiler)),
            "html": lambda: render_html(report, targets.get("trace")),
        },
        targets,
    )


def write_files(
    render: dict[str, Callable[[], str]], targets: dict[str, Path], what: str = "profile"
) -> None:
    """Each target's text, rendered only when it is written; then where each went."""
    for kind, path in targets.items():
        try:
            write_atomic(path, render[kind]())
        except OSError as exc:
            raise UserError(
                f"could not write the {what} {kind} to {path}: {exc.strerror or exc}. "
                f"Pass --{kind} with a writable path."
            ) from exc
    for kind, path in targets.items():
        print(f"{what} {kind}: {path}")
    log.info(f"{what}.written", **{kind: str(path) for kind, path in targets.items()})


def cmd_profile(args: argparse.Namespace) -> int:
    if args.compare:
        return cmd_compare(args)
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
    if "trace" in targets:
        print(f"open the trace at {PERFETTO} (Open trace file)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The two profile JSONs of --compare side by side: the report to stdout, its text
    and HTML to files (only the HTML, to --html, when that is given)."""
    if args.json or args.trace:
        raise UserError("--compare reads two profiles and writes a text and an HTML report: "
                        "--json and --trace do not apply (--html PATH does).")  # fmt: skip
    comparison = Comparison(*(load_run(Path(p).expanduser()) for p in args.compare))
    text = compare.render_text(comparison)
    sys.stdout.write(text)
    sys.stdout.flush()
    targets = output_paths(args, time.strftime("%Y%m%d-%H%M%S"), COMPARE_SUFFIXES, "compare")
    render = {"text": lambda: text, "html": lambda: compare.render_html(comparison)}
    write_files(render, targets, "comparison")
    return 0
