"""RMSNorm (aierun/ops/norm.py, kernels_src/rmsnorm.cc): x rows (fp32 residual stream
or bf16) stream through one core, the weight row stays resident for the whole
launch, the normalized rows leave as bf16 GEMM operands."""

from __future__ import annotations

from typing import Any

from aiebuild.designs.common import (
    CoreBuffer,
    KernelObject,
    iron,
    kernel_object,
    stream_program,
)
from aierun.abi import BF16, ArgSpec, Launch


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    defines = {"E": launch.params["E"], "EPS": float(launch.params["eps"])}
    return kernel_object("rmsnorm.cc", {**defines, "X_F32": args[0].dtype == "f32"})


def symbol(launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/rmsnorm.cc composes it from its -D parameters."""
    return f"rmsnorm_{args[0].dtype}_{launch.params['E']}"


def core_buffers(launch: Launch, args: list[ArgSpec]) -> list[CoreBuffer]:
    """x rows in, the weight row (resident), normalized rows out."""
    e = launch.params["E"]
    return [
        CoreBuffer("x_in", (e,), args[0].np_dtype),
        CoreBuffer("w_in", (e,), BF16, depth=1),
        CoreBuffer("y_out", (e,), BF16),
    ]


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_

    rows = launch.params["rows"]
    buffers = core_buffers(launch, args)
    x_in, w_in, y_out = (buf.make(lib) for buf in buffers)
    norm = lib.Kernel(symbol(launch, args), kernel(launch, args).name, [b.type for b in buffers])

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
