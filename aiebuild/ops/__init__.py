"""The ops of the launch vocabulary, one module each, and the registry that finds an op
by its name.

Per op the structure is the same everywhere in the project:
`aiebuild/ops/<module>.py` (this side: the IRON 1.4 design that places the kernel and
moves the data, the kernel object and its -D parameters, the kernel's cost per entry
point, its FLOPs, its simulation tolerance: one `Op`, see `common.Op`),
`kernels_src/<kernel>.cc` (the AIE2P C++ kernel), `aierun/ops/<module>.py` (the numpy
emulation) and their tests. Adding an op is one module on each side plus its tests,
and its line in `OPS` below.

A design is `design(launch, arg_specs) -> Program`: the IRON program of one launch
(unresolved), built with the API `common.iron()` hands out, whose runtime sequence
takes the launch's inputs then outputs (`arg_specs`: whole ELF arguments, even for a
slice binding such as `w_lm[3]`, whose offset the design applies in its DMA access
pattern, `common.slice_offset`). It links the kernel object named by
`kernel_object(spec, launch).name`, and spreads over the `columns` x `core_rows`
cores its params record. Run inside `iron_record.recording()` (`record`) it builds the
record that the hardware rules check, the simulator and the time model read; run
against the real `aie.iron` (`mlir`) it gives the MLIR aiecc compiles. mlir-aie is
imported only then, so this registry (and the build orchestration) loads without it.

Kernel parameters are compile-time `-D` macros; each kernel derives its entry point
symbols from them, so two instances of one kernel with different tile sizes link side
by side in one ELF.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aiebuild.array import iron_record
from aiebuild.ops import (
    common,
    decode_attn,
    eltwise,
    flash_attn,
    gemm,
    gemv,
    kv_store,
    rmsnorm,
    rope,
)
from aiebuild.ops.common import KernelObject, Op
from aiebuild.sim.compare import Tolerance
from aierun.abi import ArgSpec, ElfSpec, Launch, parse_binding

PACKAGE = Path(__file__).resolve().parents[1]  # aiebuild/

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        rmsnorm.OP, gemm.OP, gemv.OP, rope.OP, flash_attn.OP, eltwise.ADD, eltwise.SILU_MUL,
        kv_store.OP, decode_attn.OP, eltwise.BIAS,
    )
}  # fmt: skip


def op(name: str) -> Op:
    if name not in OPS:
        raise KeyError(f"no op {name!r}: add its module to aiebuild/ops")
    return OPS[name]


def launch_args(spec: ElfSpec, launch: Launch) -> list[ArgSpec]:
    """The arguments one launch's runtime sequence takes: inputs then outputs, each
    the whole ELF argument (a slice binding is applied by the design's DMA pattern)."""
    return [spec.arg(parse_binding(b)[0]) for b in (*launch.inputs, *launch.outputs)]


def kernel_object(spec: ElfSpec, launch: Launch) -> KernelObject:
    """The kernel instance a launch links: its -D parameters follow the launch's
    parameters and its arguments' dtypes (e.g. the fp32 residual stream)."""
    return op(launch.op).kernel(launch, launch_args(spec, launch))


def kernel_objects(spec: ElfSpec) -> list[KernelObject]:
    """Every kernel object the ELF's launches link, each once, in a stable order."""
    return sorted({kernel_object(spec, launch) for launch in spec.launches}, key=str)


def record(spec: ElfSpec, launch: Launch) -> iron_record.Program:
    """The launch's program as the recorded model of IRON captures it."""
    with iron_record.recording():
        return op(launch.op).design(launch, launch_args(spec, launch))


def mlir(spec: ElfSpec, launch: Launch) -> str:
    """The launch's MLIR, from its design run against the real `aie.iron`."""
    program = op(launch.op).design(launch, launch_args(spec, launch))
    return str(program.resolve_program())


def binding_bytes(spec: ElfSpec, binding: str) -> int:
    """Bytes of one launch operand: a whole argument or one slice of its leading axis."""
    name, index = parse_binding(binding)
    arg = spec.arg(name)
    return arg.nbytes if index is None else arg.nbytes // arg.shape[0]


def with_work(spec: ElfSpec) -> ElfSpec:
    """The spec with each launch's FLOPs (its op's count) and DDR bytes (every launch
    reads its operands from DDR and writes its results back, so the sum of their
    sizes) filled in: what the runtime's roofline reads from the plan."""
    launches = tuple(
        dataclasses.replace(
            launch,
            flops=op(launch.op).flops(launch, launch_args(spec, launch)),
            ddr_bytes=sum(binding_bytes(spec, b) for b in (*launch.inputs, *launch.outputs)),
        )
        for launch in spec.launches
    )
    return dataclasses.replace(spec, launches=launches)


def tolerance(spec: ElfSpec) -> Tolerance:
    """The loosest bound any of the ELF's launches allows (its outputs come out of a
    chain of them)."""
    bounds = [op(launch.op).tolerance for launch in spec.launches]
    return Tolerance(cosine=min(b.cosine for b in bounds), relative=max(b.relative for b in bounds))


def design_sources(spec: ElfSpec) -> dict[str, Path]:
    """Every file whose bytes decide this ELF's MLIR and objects, by a label that does
    not depend on where the checkout lives."""
    files = {Path(__file__), Path(common.__file__), Path(iron_record.__file__)}
    files |= {op(launch.op).module for launch in spec.launches}
    labelled = {f"aiebuild/{f.relative_to(PACKAGE).as_posix()}": f for f in files}
    kernels = {obj.source for obj in kernel_objects(spec)}
    kernels |= set(common.KERNELS_SRC.glob("*.h"))
    return labelled | {f"kernels_src/{f.name}": f for f in kernels}
