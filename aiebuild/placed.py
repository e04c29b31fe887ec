"""Every launch of an ELF recorded through its op's design and placed on the array, once
per process: the hardware rules (`doit check`, and every compile), the npu2 time model
(the manifest's modeled time) and the simulator's records all read these.

The record and placement of a launch depend only on the spec, so they are kept by the
spec's canonical JSON for as long as the process lives (a compile records each launch
once, not once for the rules and again for the time model).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiebuild import ops
from aiebuild.array import iron_record, kernel_counts, rules, timing
from aiebuild.array.core_model import CallCycles
from aiebuild.array.iron_record import Call, Program
from aiebuild.array.placement import Placement, place
from aiebuild.ops.common import KernelObject
from aierun.abi import ElfSpec, Launch, canonical_json, chunk_elfs
from aierun.errors import UserError


@dataclass(frozen=True)
class PlacedLaunch:
    """One launch: its recorded program and placement, and the kernel it links; or the
    design's own refusal (shapes it cannot tile), with no program."""

    launch: Launch
    kernel: KernelObject
    program: Program | None
    placement: Placement | None
    refusal: str | None = None

    def entry_cycles(self, call: Call) -> CallCycles:
        """The slot model's cycles of one call of the launch's kernel, from what the entry
        point issues on the op's counting arguments (kernel_counts.py)."""
        if call.kernel.object != self.kernel.name:
            raise KeyError(f"{self.launch.op} links {self.kernel.name}, not {call.kernel.object}")
        op = ops.op(self.launch.op)
        symbol = call.kernel.symbol
        args = op.count_args(symbol, kernel_counts.call_arguments(call))
        return kernel_counts.entry_cycles(self.kernel, symbol, args)

    def entry_counts(self, call: Call) -> dict[str, int]:
        """What one call issues (the counts entry_cycles prices)."""
        op = ops.op(self.launch.op)
        args = op.count_args(call.kernel.symbol, kernel_counts.call_arguments(call))
        return kernel_counts.entry_counts(self.kernel, call.kernel.symbol, args)

    def call_cost(self, call: Call) -> timing.CallCost:
        """One call priced for the time model (timing.CallCycles)."""
        idle = ops.op(self.launch.op).idle_share(self.launch, call.kernel.symbol)
        return timing.CallCost(self.entry_cycles(call).cycles, idle)

    def calls(self) -> dict[str, Call]:
        """One recorded call of each entry point the launch's workers call, by symbol."""
        found: dict[str, Call] = {}
        for worker in self.program.workers if self.program else ():
            for node, _ in iron_record.walk(worker.body):
                if isinstance(node, Call):
                    found.setdefault(node.kernel.symbol, node)
        return found


_PLACED: dict[str, tuple[PlacedLaunch, ...]] = {}


def launches(spec: ElfSpec) -> tuple[PlacedLaunch, ...]:
    """Every launch of the ELF, recorded and placed (kept for the process)."""
    key = canonical_json(spec.to_json())
    if key not in _PLACED:
        _PLACED[key] = tuple(_place(spec, launch) for launch in spec.launches)
    return _PLACED[key]


def _place(spec: ElfSpec, launch: Launch) -> PlacedLaunch:
    kernel = ops.kernel_object(spec, launch)
    try:
        program = ops.record(spec, launch)
    except UserError as exc:  # the design cannot tile these shapes
        return PlacedLaunch(launch, kernel, None, None, str(exc))
    return PlacedLaunch(launch, kernel, program, place(program))


# -- the hardware rules -------------------------------------------------------------------
def check_specs(specs: Iterable[ElfSpec]) -> list[rules.LaunchCheck]:
    """The rules check of every launch of these ELFs."""
    checks = []
    for spec in specs:
        for placed in launches(spec):
            report = (
                None if placed.program is None else rules.check(placed.program, placed.placement)
            )
            checks.append(rules.LaunchCheck(spec, placed.launch, report, placed.refusal))
    return checks


def require_legal(specs: Iterable[ElfSpec]) -> list[rules.LaunchCheck]:
    """The checks of every launch; a RulesError listing every violation if any."""
    checks = check_specs(specs)
    rules.refuse_violations(checks)
    return checks


# -- the npu2 time model ------------------------------------------------------------------
def elf_time(spec: ElfSpec) -> timing.ElfTime:
    """One call of the ELF on npu2: every launch timed from its record, its kernel's
    calls priced by what they issue on the host build of the object (its -D
    parameters, the GEMM's matmul mode included). The rules check refuses an
    untileable launch before any ELF is timed."""
    times = []
    for placed in launches(spec):
        if placed.program is None:
            raise rules.RulesError(f"{spec.instance}: {placed.refusal}")
        label = placed.launch.label or placed.launch.op
        times.append(timing.launch_time(placed.program, placed.call_cost, label, placed.placement))
    return timing.ElfTime(spec.instance, times)


def entry_points(spec: ElfSpec) -> dict[str, dict[str, Any]]:
    """Per kernel entry point the ELF's launches call, what one call issues and its
    cycles on the slot model: {symbol: {"object", "counts", "cycles", "bound"}} (what
    `doit simulate` records)."""
    found: dict[str, dict[str, Any]] = {}
    for placed in launches(spec):
        for symbol, call in placed.calls().items():
            cycles = placed.entry_cycles(call)
            found[symbol] = {
                "object": placed.kernel.name,
                "counts": placed.entry_counts(call),
                "cycles": cycles.cycles,
                "bound": cycles.bound,
            }
    return found


def npu2_model(specs: Iterable[ElfSpec]) -> dict[str, Any]:
    """The modeled npu2 time of one call of each ELF, by instance ({"ms", "fixed_ms",
    "launches": [{"label", "ms", "bound"}]}): what the manifest records beside the
    artifacts for the runtime's profile report."""
    return {spec.instance: elf_time(spec).summary() for spec in specs}


PREFILL_ELFS = ("rms_gemms_rope", "flash_attn", "o_ffn")
DECODE_ELFS = ("rms_gemv_rope", "o_gemv_ffn")


def phase_ms(ms: dict[str, float], layers: int) -> dict[str, float]:
    """A prompt's prefill and one decode token from the per-ELF times of one bucket (by
    ELF name): each layer calls its phase's ELFs once, then the LM head once."""
    return {"prefill": _token_ms(ms, layers, PREFILL_ELFS), "decode": decode_ms(ms, layers)}


def decode_ms(ms: dict[str, float], layers: int) -> float:
    """One decode token from the decode ELFs' times (by ELF name)."""
    return _token_ms(ms, layers, DECODE_ELFS)


def _token_ms(ms: dict[str, float], layers: int, elfs: tuple[str, ...]) -> float:
    return layers * sum(ms[n] for n in elfs) + ms["lm_head_gemv"]


def chunk_ms(ms: dict[str, float], layers: int, bucket: int, chunks: int) -> list[float]:
    """Each chunk of a prompt of `chunks` whole buckets prefilled chunk by chunk, from the
    per-ELF times by instance: its layers call its bucket's ELFs, a later chunk's
    attention the ELF after its past (aiebuild/specs.py flash_attn_past). The LM head
    runs once, after the last (not in these)."""
    return [
        layers * sum(ms[n] for n in chunk_elfs(chunk * bucket, bucket)) for chunk in range(chunks)
    ]
