"""RMSNorm (aierun/ops/norm.py, kernels_src/rmsnorm.cc): x rows (fp32 residual stream
or bf16) stream through one core, the weight row stays resident for the whole
launch, the normalized rows leave as bf16 GEMM operands."""

from __future__ import annotations

from aiebuild.designs.common import KernelObject, iron, kernel_object, stream_program, tensor
from aierun.abi import BF16, ArgSpec, Launch


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    defines = {"E": launch.params["E"], "EPS": float(launch.params["eps"])}
    return kernel_object("rmsnorm.cc", {**defines, "X_F32": args[0].dtype == "f32"})


def symbol(launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/rmsnorm.cc composes it from its -D parameters."""
    return f"rmsnorm_{args[0].dtype}_{launch.params['E']}"


def design(launch: Launch, args: list[ArgSpec]) -> str:
    lib = iron()
    from aie.iron.controlflow import range_

    rows, e = launch.params["rows"], launch.params["E"]
    x_row, row = tensor(e, args[0].np_dtype), tensor(e, BF16)
    x_in = lib.ObjectFifo(x_row, name="x_in", depth=2)
    w_in = lib.ObjectFifo(row, name="w_in", depth=1)
    y_out = lib.ObjectFifo(row, name="y_out", depth=2)
    norm = lib.Kernel(symbol(launch, args), kernel(launch, args).name, [x_row, row, row])

    def core(x, w, y, rmsnorm):
        weight = w.acquire(1)
        for _ in range_(rows):
            values, result = x.acquire(1), y.acquire(1)
            rmsnorm(values, weight, result)
            x.release(1)
            y.release(1)
        w.release(1)

    worker = lib.Worker(core, [x_in.cons(), w_in.cons(), y_out.prod(), norm])
    fills = [(x_in.prod(), None), (w_in.prod(), None)]
    return stream_program(args, fills, [(y_out.cons(), None)], [worker])
