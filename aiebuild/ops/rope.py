"""Rotary embedding (aierun/ops/rope.py, kernels_src/rope.cc): one row of all heads
and that position's table row (cos | sin) per kernel call. The rows are split into
one consecutive block per column; each column's core streams its x rows and table
rows from its shim and its rotated rows back."""

from __future__ import annotations

from typing import Any

from aiebuild.ops.common import (
    KernelObject,
    Op,
    array,
    core_tile,
    iron,
    kernel_object,
    output_elements,
    row_streams,
    stream_program,
    streaming_core,
    tensor,
)
from aiebuild.ops.rmsnorm import row_cores
from aierun.abi import ArgSpec, Launch


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    params = {"HEADS": launch.params["heads"], "DH": launch.params["head_dim"]}
    return kernel_object("rope.cc", {**params, "TABLE_F32": args[1].dtype == "f32"})


def symbol(launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/rope.cc composes it: the table's dtype, heads x head_dim."""
    return f"rope_{args[1].dtype}_{launch.params['heads']}x{launch.params['head_dim']}"


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    heads, dim, rows = launch.params["heads"], launch.params["head_dim"], launch.params["rows"]
    columns, _ = array(launch)
    shapes = [(heads * dim,), (dim,), (heads * dim,)]
    types = [tensor(s, a.np_dtype) for s, a in zip(shapes, args, strict=True)]
    rotate = lib.Kernel(symbol(launch, args), kernel(launch, args).name, types)
    handles, streams = row_streams(lib, args, columns, rows, ["x", "table", "y"], shapes)
    body = streaming_core(rows // columns)
    workers = [lib.Worker(body, [*handles[c], rotate], tile=core_tile(lib, c, 0))
               for c in range(columns)]  # fmt: skip
    return stream_program(args, streams, workers)


def params(rows: int, heads: int, head_dim: int) -> dict[str, int]:
    return {"rows": rows, "head_dim": head_dim, "heads": heads, **row_cores(rows)}


def flops(launch: Launch, args: list[ArgSpec]) -> int:
    return 3 * output_elements(launch, args)  # x1*cos - x2*sin: two products and a sum


OP = Op("rope", design, kernel, flops)
