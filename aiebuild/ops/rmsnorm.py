"""RMSNorm (aierun/ops/norm.py, kernels_src/rmsnorm.cc): the rows are split into one
consecutive block per column; each column's core streams its x rows (fp32 residual
stream or bf16) from its shim and its normalized rows (bf16 GEMM operands) back,
while the weight row, streamed once from shim 0, is broadcast to every core and
stays resident for the whole launch."""

from __future__ import annotations

from typing import Any

from aiebuild.array.geometry import COLUMNS, cores, largest_divisor
from aiebuild.ops.common import (
    KernelObject,
    Op,
    array,
    core_tile,
    iron,
    kernel_object,
    output_elements,
    resident_row_core,
    row_streams,
    stream_program,
    tensor,
)
from aierun.abi import BF16, ArgSpec, Launch


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    defines = {"E": launch.params["E"], "EPS": float(launch.params["eps"])}
    return kernel_object("rmsnorm.cc", {**defines, "X_F32": args[0].dtype == "f32"})


def symbol(launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/rmsnorm.cc composes it from its -D parameters."""
    return f"rmsnorm_{args[0].dtype}_{launch.params['E']}"


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    rows, e = launch.params["rows"], launch.params["E"]
    columns, _ = array(launch)
    row_ty = (e,)
    norm = lib.Kernel(symbol(launch, args), kernel(launch, args).name,
                      [tensor(row_ty, args[0].np_dtype), tensor(row_ty, BF16),
                       tensor(row_ty, BF16)])  # fmt: skip
    handles, streams = row_streams(
        lib, args, columns, rows, ["x", "w", "y"], [row_ty, row_ty, row_ty],
        resident={1: tensor(row_ty, BF16)},
    )  # fmt: skip

    core = resident_row_core(rows // columns)
    workers = [lib.Worker(core, [*handles[c], norm], tile=core_tile(lib, c, 0))
               for c in range(columns)]  # fmt: skip
    return stream_program(args, streams, workers)


def params(rows: int, e: int, eps: float) -> dict[str, int | float]:
    """Whole rows per column, one core per column."""
    return {"rows": rows, "E": e, "eps": eps, **row_cores(rows)}


def row_cores(rows: int) -> dict[str, int]:
    """Row-wise ops (rmsnorm, rope, kv_store): whole rows per column, one core each."""
    return cores(largest_divisor(rows, COLUMNS))


def flops(launch: Launch, args: list[ArgSpec]) -> int:
    return 4 * output_elements(launch, args)  # square, accumulate, times rsqrt, times w


OP = Op("rmsnorm", design, kernel, flops)
