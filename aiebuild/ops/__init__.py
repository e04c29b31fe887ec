"""IRON designs, one module per op, and the registry that ties an op to its kernel.

Per op the structure is the same everywhere in the project:
`aierun/ops/<module>.py` (the numpy emulation), `kernels_src/<kernel>.cc` (the AIE2P
C++ kernel), `aiebuild/ops/<module>.py` (the IRON 1.4 design that places the
kernel and moves the data) and their tests.

A design is `design(launch, arg_specs) -> Program`: the IRON program of one launch
(unresolved), built with the API `common.iron()` hands out, whose runtime sequence
takes the launch's inputs then outputs (`arg_specs`: whole ELF
arguments, even for a slice binding such as `w_lm[3]`, whose offset the design
applies in its DMA access pattern, `common.slice_offset`). It links the kernel
object named by `kernel_object(spec, launch).name`, and spreads over the
`columns` x `core_rows` cores its spec records. Run inside
`iron_record.recording()` (`record`) it builds the record that the hardware rules
check, the simulator and the time model read; run against the real `aie.iron`
(`mlir`) it gives the MLIR aiecc compiles. mlir-aie is imported only then, so
this registry (and the build orchestration) loads without it.

Kernel parameters are compile-time `-D` macros; each kernel derives its entry
point symbols from them, so two instances of one kernel with different tile
sizes link side by side in one ELF.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiebuild.array import iron_record
from aiebuild.ops import common, eltwise, flash_attn, gemm, gemv, kv_store, rmsnorm, rope
from aiebuild.ops.common import KernelObject
from aierun.abi import ArgSpec, ElfSpec, Launch, parse_binding

PACKAGE = Path(__file__).resolve().parents[1]  # aiebuild/

Design = Callable[[Launch, list[ArgSpec]], Any]


@dataclass(frozen=True)
class OpDesign:
    design: Design
    module: Path  # the design's source file (part of the content key)
    kernel: Callable[[Launch, list[ArgSpec]], KernelObject]  # source and -D parameters


def _op(module, design: Design | None = None) -> OpDesign:
    return OpDesign(design or module.design, Path(module.__file__), module.kernel)


DESIGNS: dict[str, OpDesign] = {
    "rmsnorm": _op(rmsnorm),
    "gemm": _op(gemm),
    "gemv": _op(gemv),
    "rope": _op(rope),
    "flash_attn": _op(flash_attn),
    "add": _op(eltwise, eltwise.design_add),
    "silu_mul": _op(eltwise, eltwise.design_silu_mul),
    "kv_store": _op(kv_store),
}


def op_design(op: str) -> OpDesign:
    if op not in DESIGNS:
        raise KeyError(f"no IRON design for op {op!r}: add one to aiebuild/ops")
    return DESIGNS[op]


def kernel_object(spec: ElfSpec, launch: Launch) -> KernelObject:
    """The kernel instance a launch links: its -D parameters follow the launch's
    parameters and its arguments' dtypes (e.g. the fp32 residual stream)."""
    return op_design(launch.op).kernel(launch, launch_args(spec, launch))


def kernel_objects(spec: ElfSpec) -> list[KernelObject]:
    """Every kernel object the ELF's launches link, each once, in a stable order."""
    return sorted({kernel_object(spec, launch) for launch in spec.launches}, key=str)


def launch_args(spec: ElfSpec, launch: Launch) -> list[ArgSpec]:
    """The arguments one launch's runtime sequence takes: inputs then outputs, each
    the whole ELF argument (a slice binding is applied by the design's DMA pattern)."""
    return [spec.arg(parse_binding(b)[0]) for b in (*launch.inputs, *launch.outputs)]


def record(spec: ElfSpec, launch: Launch) -> iron_record.Program:
    """The launch's program as the recorded model of IRON captures it."""
    with iron_record.recording():
        return op_design(launch.op).design(launch, launch_args(spec, launch))


def mlir(spec: ElfSpec, launch: Launch) -> str:
    """The launch's MLIR, from its design run against the real `aie.iron`."""
    program = op_design(launch.op).design(launch, launch_args(spec, launch))
    return str(program.resolve_program())


def design_sources(spec: ElfSpec) -> dict[str, Path]:
    """Every file whose bytes decide this ELF's MLIR and objects, by a label that does
    not depend on where the checkout lives."""
    files = {Path(__file__), Path(common.__file__), Path(iron_record.__file__)}
    files |= {op_design(launch.op).module for launch in spec.launches}
    labelled = {f"aiebuild/{f.relative_to(PACKAGE).as_posix()}": f for f in files}
    kernels = {obj.source for obj in kernel_objects(spec)}
    kernels |= set(common.KERNELS_SRC.glob("*.h"))
    return labelled | {f"kernels_src/{f.name}": f for f in kernels}
