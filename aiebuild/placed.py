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
from aiebuild.array import rules, timing
from aiebuild.array.iron_record import Program
from aiebuild.array.placement import Placement, place
from aiebuild.ops.common import KernelObject
from aierun.abi import ElfSpec, Launch, canonical_json
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

    def call_cycles(self, object_name: str, symbol: str) -> float:
        """Cycles of one call of the launch's kernel (timing.CallCycles)."""
        if object_name != self.kernel.name:
            raise KeyError(f"{self.launch.op} links {self.kernel.name}, not {object_name}")
        return ops.op(self.launch.op).call_cycles(symbol, self.kernel.values)


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
    costs from the object's -D parameters (the matmul mode included: the GEMM passes
    the launch's `mma` as -D AIEK_MMA). The rules check refuses an untileable launch
    before any ELF is timed."""
    times = []
    for placed in launches(spec):
        if placed.program is None:
            raise rules.RulesError(f"{spec.instance}: {placed.refusal}")
        label = placed.launch.label or placed.launch.op
        times.append(
            timing.launch_time(placed.program, placed.call_cycles, label, placed.placement)
        )
    return timing.ElfTime(spec.instance, times)


def npu2_model(specs: Iterable[ElfSpec]) -> dict[str, Any]:
    """The modeled npu2 time of one call of each ELF, by instance ({"ms", "fixed_ms",
    "launches": [{"label", "ms", "bound"}]}): what the manifest records beside the
    artifacts for the runtime's profile report."""
    return {spec.instance: elf_time(spec).summary() for spec in specs}
