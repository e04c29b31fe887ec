"""Elementwise launches (aierun/ops/eltwise.py, kernels_src/eltwise.cc): the residual
add (bf16 + fp32 residual -> fp32) and SwiGLU's silu(gate) * up. The flat elements
are split into one consecutive run per column; each column's core streams its run of
both operands from its shim in chunks and the results back.

`bias` (Qwen2's q/k/v projections) adds one bias row to every row of a projection's
output with the same add kernel, a call per row: the rows are split as rmsnorm's, and
the bias row (bf16, as the checkpoint stores it: exact, and half the core memory of
fp32), streamed once from shim 0, is broadcast to every core and stays resident."""

from __future__ import annotations

import math
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
    streaming_core,
    tensor,
)
from aiebuild.ops.rmsnorm import row_cores
from aierun.abi import ArgSpec, Launch
from aierun.errors import UserError

LANES = 16  # elements per vector step of the kernels
MAX_CHUNK = 2048  # elements per ObjectFifo buffer (4 KiB of bf16, 8 KiB of fp32)


def chunk(launch: Launch) -> int:
    """Elements per kernel call: the largest power-of-two share of a column's run."""
    columns, _ = array(launch)
    run = launch.params["rows"] * launch.params["cols"] // columns
    size = math.gcd(run, MAX_CHUNK)
    if size % LANES:
        raise UserError(
            f"{launch.op}: runs of {run} elements do not split into {LANES}-lane chunks"
        )
    return size


def _object(size: int, args: list[ArgSpec]) -> KernelObject:
    """-D CHUNK and whether each operand (a, b, result) is fp32 rather than bf16."""
    wide = {f"{name}_F32": arg.dtype == "f32" for name, arg in zip("ABC", args, strict=True)}
    return kernel_object("eltwise.cc", {"CHUNK": size, **wide})


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return _object(chunk(launch), args)


def bias_kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    """The add kernel over one whole row (the bias row's length)."""
    return _object(launch.params["cols"], args)


def symbol(name: str, size: int, args: list[ArgSpec]) -> str:
    """As kernels_src/eltwise.cc composes it, e.g. add_bf16_f32_f32_64."""
    return "_".join([name, *(a.dtype for a in args), str(size)])


def _binary(launch: Launch, args: list[ArgSpec], name: str) -> Any:
    lib = iron()
    size, (columns, _) = chunk(launch), array(launch)
    op = lib.Kernel(symbol(name, size, args), kernel(launch, args).name,
                    [tensor((size,), a.np_dtype) for a in args])  # fmt: skip
    chunks = launch.params["rows"] * launch.params["cols"] // size
    handles, streams = row_streams(lib, args, columns, chunks, ["a", "b", "out"], [(size,)] * 3)
    body = streaming_core(chunks // columns)
    workers = [lib.Worker(body, [*handles[c], op], tile=core_tile(lib, c, 0))
               for c in range(columns)]  # fmt: skip
    return stream_program(args, streams, workers)


def design_add(launch: Launch, args: list[ArgSpec]) -> Any:
    return _binary(launch, args, "add")


def design_silu_mul(launch: Launch, args: list[ArgSpec]) -> Any:
    return _binary(launch, args, "silu_mul")


def design_bias(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    rows, n = launch.params["rows"], launch.params["cols"]
    columns, _ = array(launch)
    row = (n,)
    add = lib.Kernel(symbol("add", n, args), bias_kernel(launch, args).name,
                     [tensor(row, a.np_dtype) for a in args])  # fmt: skip
    handles, streams = row_streams(lib, args, columns, rows, ["x", "b", "y"], [row] * 3,
                                   resident={1: tensor(row, args[1].np_dtype)})  # fmt: skip

    core = resident_row_core(rows // columns)
    workers = [lib.Worker(core, [*handles[c], add], tile=core_tile(lib, c, 0))
               for c in range(columns)]  # fmt: skip
    return stream_program(args, streams, workers)


def bias_params(rows: int, cols: int) -> dict[str, int]:
    """Whole rows per column, one core per column (as rmsnorm)."""
    if cols % LANES:
        raise UserError(f"bias: rows of {cols} elements do not split into {LANES}-lane steps")
    return {"rows": rows, "cols": cols, **row_cores(rows)}


def params(rows: int, cols: int) -> dict[str, int]:
    """Equal runs of whole vectors per column."""
    vectors = rows * cols // LANES
    return {"rows": rows, "cols": cols, **cores(largest_divisor(vectors, COLUMNS))}


def _flops_per_element(count: int):
    def flops(launch: Launch, args: list[ArgSpec]) -> int:
        return count * output_elements(launch, args)

    return flops


ADD = Op("add", design_add, kernel, _flops_per_element(1))
BIAS = Op("bias", design_bias, bias_kernel, _flops_per_element(1))
# exp, add, reciprocal, two products per element
SILU_MUL = Op("silu_mul", design_silu_mul, kernel, _flops_per_element(5))
