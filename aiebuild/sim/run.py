"""`doit simulate`: every ELF of a model's manifest run through the dataflow model
(aiebuild/sim/dataflow.py) with the kernels' own C++ compiled for this machine
(aiebuild/sim/host_kernels.py), compared with the emulated device on the arguments
of one real call.

The arguments come from an aierun Session on emu: one prefill per bucket (a prompt
that fills the bucket but one position), one decode step, and a prompt in chunks for
each later chunk's attention ELF; the first call of each
ELF is captured (its host-written arguments before the call, its outputs after).
Each launch of the ELF then runs, in order, on one set of argument buffers, exactly
as the launches of one NPU call share device memory; buffers the host never writes
start as NaN, so a launch that reads what no launch wrote shows.

Each output must be within its ELF's tolerance: the loosest its launches' ops allow
(aiebuild/ops, `Op.tolerance`; the comparison itself is aiebuild/sim/compare.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from doit.exceptions import TaskFailed
from tqdm import tqdm

from aiebuild import ops, placed
from aiebuild.array import iron_record as im
from aiebuild.ops.common import KernelObject
from aiebuild.sim import dataflow, host_kernels
from aiebuild.sim.compare import compare
from aiebuild.tasks import BuildConfig, compile_all
from aierun.abi import HOST_READ, HOST_WRITTEN, O_GEMV_FFN, ElfSpec, parse_binding
from aierun.artifacts import ArtifactSet
from aierun.errors import UserError
from aierun.files import write_json_atomic
from aierun.model import Checkpoint
from aierun.session import session_on

PROMPT = "The quick brown fox jumps over the lazy dog. "  # repeated to fill a bucket


# --- capturing one real call per ELF --------------------------------------------------


@dataclass
class Capture:
    """One emu call of an ELF: what the host wrote before it, what it produced."""

    spec: ElfSpec
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


class CallCapture:
    """Keeps a copy of the first call of every ELF once `capturing` is set (prepare's
    warm-up calls run on zeros): its host-written arguments before the call, what it
    leaves for the host after it (a Session's CallObserver)."""

    def __init__(self) -> None:
        self.captured: dict[str, Capture] = {}
        self.capturing = False
        self._inputs: dict[str, np.ndarray] | None = None

    def before_run(self, spec: ElfSpec, buffers: dict[str, Any]) -> None:
        if self.capturing and spec.instance not in self.captured:
            self._inputs = {
                a.name: buffers[a.name].host.copy() for a in spec.args_with(*HOST_WRITTEN)
            }

    def after_run(self, spec: ElfSpec, buffers: dict[str, Any]) -> None:
        if self._inputs is not None:
            outputs = {a.name: buffers[a.name].host.copy() for a in spec.args_with(*HOST_READ)}
            self.captured[spec.instance] = Capture(spec, self._inputs, outputs)
            self._inputs = None


def capture_calls(checkpoint: Checkpoint, manifest: Path) -> dict[str, Capture]:
    """Run one prefill per compiled bucket and one decode step on emu, capturing the
    first call of every ELF."""
    artifacts = ArtifactSet.open(manifest)
    capture = CallCapture()
    with session_on("emu", checkpoint, artifacts, capture) as session:
        session.prepare()
        capture.capturing = True
        prompt = checkpoint.encode_prompt(PROMPT * 1000, chat=False)
        for bucket in artifacts.buckets:
            ids = prompt[: bucket - 1]
            logits = session.prefill(ids, seq_len=bucket)
        # One decode step per decode ELF: every attention walk reaches these positions.
        for ffn in (i for i in artifacts.instances if session.spec(i).name == O_GEMV_FFN):
            logits = session.decode(int(np.argmax(logits)), ffn)
        # A longer prompt per later chunk's attention ELF (aiebuild/specs.py flash_attn_past).
        largest = artifacts.buckets[-1]
        for past in range(largest, session.context, largest):
            for bucket in (b for b in artifacts.buckets if past + b <= session.context):
                session.prefill(prompt[: past + bucket - 1])
    return capture.captured


# --- the kernels of this machine, one register file per core -------------------------


class HostKernels:
    """The `dataflow.KernelLookup` for the host-compiled kernels of one ELF: a kernel
    object by its name (the design's `link_with`), loaded once; every worker has its
    own rounding mode register even when workers share a library, and each launch
    starts with fresh cores (`start`)."""

    def __init__(self, objects: Iterable[KernelObject], home: Path | None = None) -> None:
        self.libraries = {obj.name: host_kernels.host_kernel(obj, home) for obj in objects}
        self.registers: dict[int, int] = {}  # id(worker) -> its rounding register
        self.owner: dict[str, int] = {}  # library -> the worker whose register it holds

    def start(self) -> None:
        """New cores: every register back to the AIE2P default."""
        self.registers.clear()
        self.owner.clear()

    def __call__(self, kernel: im.Kernel, worker: im.Worker) -> Callable[..., Any]:
        library = self.libraries.get(kernel.object)
        if library is None:
            raise dataflow.DataflowError(
                f"{kernel.symbol} links {kernel.object}, which no launch of the ELF builds"
            )
        entry, core = library.entry(kernel.symbol), id(worker)

        def call(*args: Any) -> None:
            if self.owner.get(kernel.object) != core:
                self._switch(library, kernel.object, core)
            entry(*args)

        return call

    def _switch(self, library: host_kernels.HostKernel, name: str, core: int) -> None:
        previous = self.owner.get(name)
        if previous is not None:
            self.registers[previous] = library.rounding
        if core in self.registers:
            library.rounding = self.registers[core]
        else:
            library.reset_tile()
        self.owner[name] = core


# --- one ELF through the model ----------------------------------------------------------


def simulate_elf(
    capture: Capture, kernels: HostKernels, on_launch: Callable[[], None] = lambda: None
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Run every launch of the captured ELF through the model; returns its outputs and
    per-launch statistics."""
    spec = capture.spec
    arrays = {
        arg.name: capture.inputs[arg.name].copy()
        if arg.role in HOST_WRITTEN
        else dataflow.poisoned(arg.shape, arg.np_dtype)
        for arg in spec.args
    }
    launches = []
    for number, launch in enumerate(spec.launches):
        name = f"{spec.instance} launch {number} ({launch.label or launch.op})"
        program = ops.record(spec, launch)
        hosts = [arrays[parse_binding(b)[0]] for b in (*launch.inputs, *launch.outputs)]
        kernels.start()
        started = time.perf_counter()
        stats = dataflow.Launch(program, kernels, name).run(hosts)
        seconds = time.perf_counter() - started
        launches.append({"launch": name, "seconds": round(seconds, 3), **asdict(stats)})
        on_launch()
    outputs = {a.name: arrays[a.name] for a in spec.args_with(*HOST_READ)}
    return outputs, launches


# --- the command ----------------------------------------------------------------------------


@dataclass
class ElfResult:
    elf: str
    seconds: float
    kernel_calls: int
    outputs: dict[str, dict[str, float]]
    launches: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    # per kernel entry point: what one call issues and its slot-model cycles
    # (aiebuild/placed.py entry_points, the npu2 time model's prices)
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


def simulate(config: BuildConfig, elf_filter: str = "") -> list[ElfResult]:
    """Build the emu manifest of `config`, capture one real call per ELF and run every
    selected ELF through the model."""
    model = config.model_dir()
    # A build home of its own: the user's emu manifest (other buckets) stays as it is.
    own = BuildConfig(config.home / "simulate" / "emu", str(model), config.buckets, "emu",
                      weights=config.weights, context=config.context)  # fmt: skip
    manifest = compile_all(own)
    checkpoint = Checkpoint(model)
    captured = capture_calls(checkpoint, manifest)
    wanted = [c for c in captured.values() if _selected(c.spec, elf_filter)]
    if not wanted:
        raise UserError(
            f"elf={elf_filter!r} names none of the ELFs {sorted(captured)}: give names or "
            "instances, comma-separated (elf=lm_head_gemv,o_ffn.s64)"
        )
    results = []
    total = sum(len(c.spec.launches) for c in wanted)
    with tqdm(total=total, desc="simulate", unit="launch") as progress:
        for capture in wanted:
            progress.set_postfix_str(capture.spec.instance)
            results.append(_run_one(capture, config.home, progress.update))
    return results


def _selected(spec: ElfSpec, elf_filter: str) -> bool:
    names = {n.strip() for n in elf_filter.split(",") if n.strip()}
    return not names or spec.name in names or spec.instance in names


def _run_one(capture: Capture, home: Path, advance: Callable[[], None]) -> ElfResult:
    spec = capture.spec
    started = time.perf_counter()
    kernels = HostKernels(ops.kernel_objects(spec), home)
    try:
        outputs, launches = simulate_elf(capture, kernels, advance)
    except dataflow.DataflowError as exc:
        seconds = time.perf_counter() - started
        return ElfResult(spec.instance, seconds, 0, {}, [], [str(exc)])
    seconds = time.perf_counter() - started
    bound = ops.tolerance(spec)
    diffs, problems = {}, []
    for name, values in outputs.items():
        diff = compare(values, capture.outputs[name])
        diffs[name] = asdict(diff)
        problem = bound.problem(diff)
        if problem:
            problems.append(f"{name}: {problem}")
    calls = sum(launch["kernel_calls"] for launch in launches)
    problems += [w for launch in launches for w in launch["warnings"]]
    kernels = placed.entry_points(spec)
    return ElfResult(spec.instance, seconds, calls, diffs, launches, problems, kernels)


def table(results: list[ElfResult]) -> str:
    header = f"{'ELF':<22} {'output':<10} {'max abs':>10} {'max ulp':>9} {'cosine':>10} " \
             f"{'calls':>7} {'wall s':>7}  result"  # fmt: skip
    lines = [header, "-" * len(header)]
    for result in results:
        first = True
        for name, diff in result.outputs.items() or {"-": None}.items():
            cells = (
                f"{diff['max_abs']:>10.3g} {diff['max_ulp']:>9.1f} {diff['cosine']:>10.6f}"
                if diff else f"{'':>10} {'':>9} {'':>10}"
            )  # fmt: skip
            head = (result.elf, f"{result.kernel_calls:>7} {result.seconds:>7.2f}") if first \
                else ("", f"{'':>7} {'':>7}")  # fmt: skip
            verdict = ("ok" if result.passed else "FAIL") if first else ""
            lines.append(f"{head[0]:<22} {name:<10} {cells} {head[1]}  {verdict}")
            first = False
        lines += [f"    {problem}" for problem in result.problems]
    return "\n".join([*lines, LEGEND])


LEGEND = "\n".join(
    (
        "Each output against emu's: the largest absolute difference, the same in bf16 steps at",
        "emu's value (max ulp: a large count is a tiny value's, near a zero), the cosine. An ELF",
        "passes on its ops' stated bounds (aiebuild/ops/<op>.py): equality where the kernel",
        "computes in emu's order, a stated bound where it does not (the attention's online",
        "softmax, sums of fp32 partials).",
    )
)


# Prefill buckets `doit simulate` runs when buckets= is not given (CI's setting).
DEFAULT_BUCKETS = (64,)


def task_action(config: BuildConfig, elf_filter: str) -> TaskFailed | None:
    """The `doit simulate` action: fails (doit exits 1) when an ELF is beyond its
    tolerances or cannot run; a user error is one line."""
    try:
        code = command(config, elf_filter)
    except UserError as exc:
        return TaskFailed(str(exc))
    return TaskFailed("simulated ELFs differ from emu beyond tolerance") if code else None


def command(config: BuildConfig, elf_filter: str) -> int:
    """Simulate, print the table, write the JSON; 0 when every ELF is within its
    tolerances, else 1."""
    started = time.perf_counter()
    results = simulate(config, elf_filter)
    wall = time.perf_counter() - started
    print(table(results))
    passed = all(r.passed for r in results)
    path = write_report(config, results, wall)
    print(f"{len(results)} ELFs, {'all within tolerance' if passed else 'FAILED'}, "
          f"{wall:.1f} s wall; {path}")  # fmt: skip
    return 0 if passed else 1


def write_report(config: BuildConfig, results: list[ElfResult], wall: float) -> Path:
    model = config.model_dir().name
    buckets = "-".join(str(b) for b in config.buckets)
    path = config.home / "simulate" / f"{model}-s{buckets}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "model": model,
        "buckets": list(config.buckets),
        "wall_seconds": round(wall, 2),
        "tolerances": {name: asdict(op.tolerance) for name, op in sorted(ops.OPS.items())},
        "passed": all(r.passed for r in results),
        "elfs": [{**asdict(r), "passed": r.passed} for r in results],
    }
    write_json_atomic(path, data)
    return path
