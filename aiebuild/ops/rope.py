"""Rotary embedding (aierun/ops/rope.py, kernels_src/rope.cc) of one or more tensors of
the same rows (decode's and prefill's Q and K: one launch, where two would cost the
array a reconfiguration more), each [rows, heads_j * head_dim], by one table row per
row (cos | sin). A kernel call rotates one row's `call_heads` heads (the heads' greatest
common divisor: a KV head's worth for Q and K), so every object has one size.

The rows are split into one consecutive block per column; each column's core streams,
through one input channel, its block's rows of the first tensor and then of the next,
the table rows of its block once per tensor through the other, and its rotated rows
back through one output channel, first tensor first."""

from __future__ import annotations

import math
from typing import Any

from aiebuild.ops.common import (
    KernelObject,
    Op,
    Stream,
    array,
    contiguous,
    core_tile,
    iron,
    kernel_object,
    resident_row_core,
    shim_tile,
    stream_program,
    tensor,
)
from aiebuild.ops.rmsnorm import row_cores
from aierun.abi import ArgSpec, Launch


def part_heads(launch: Launch) -> list[int]:
    """Heads of each tensor the launch rotates."""
    heads = launch.params["heads"]
    return list(heads) if isinstance(heads, list | tuple) else [heads]


def call_heads(launch: Launch) -> int:
    return math.gcd(*part_heads(launch))


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    params = {"HEADS": call_heads(launch), "DH": launch.params["head_dim"]}
    return kernel_object("rope.cc", {**params, "TABLE_F32": table_arg(launch, args).dtype == "f32"})


def table_arg(launch: Launch, args: list[ArgSpec]) -> ArgSpec:
    return args[len(part_heads(launch))]


def symbol(launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/rope.cc composes it: the table's dtype, heads x head_dim."""
    table = table_arg(launch, args)
    return f"rope_{table.dtype}_{call_heads(launch)}x{launch.params['head_dim']}"


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_
    heads, dim, rows = part_heads(launch), launch.params["head_dim"], launch.params["rows"]
    parts, per_call = len(heads), call_heads(launch)
    columns, _ = array(launch)
    block = rows // columns
    x_ty = tensor((per_call * dim,), args[0].np_dtype)
    table = table_arg(launch, args)
    t_ty = tensor((dim,), table.np_dtype)
    rotate = lib.Kernel(symbol(launch, args), kernel(launch, args).name, [x_ty, t_ty, x_ty])

    def core(xs, ts, ys, fn):
        for part_calls in (h // per_call for h in heads):
            one_row = resident_row_core(part_calls)  # its table row held for its calls
            for _ in range_(block):
                one_row(xs, ts, ys, fn)

    workers, streams = [], []
    for c in range(columns):
        x_in = lib.ObjectFifo(x_ty, name=f"x{c}")
        t_in = lib.ObjectFifo(t_ty, name=f"table{c}")
        y_out = lib.ObjectFifo(x_ty, name=f"y{c}")
        workers.append(lib.Worker(core, [x_in.cons(), t_in.cons(), y_out.prod(), rotate],
                                  tile=core_tile(lib, c, 0)))  # fmt: skip

        def rows_of(position: int, width: int, column: int = c) -> Any:
            at = column * block * width
            return contiguous(args[position].shape, at, block * width)

        xs = [rows_of(j, h * dim) for j, h in enumerate(heads)]
        ys = [rows_of(parts + 1 + j, h * dim) for j, h in enumerate(heads)]
        t = rows_of(parts, dim)
        streams += [
            Stream(0, x_in.prod(tile=shim_tile(lib, c)), [xs[0]],
                   then=tuple((j, xs[j]) for j in range(1, parts))),
            Stream(parts, t_in.prod(tile=shim_tile(lib, c)), [t],
                   then=tuple((parts, t) for _ in range(1, parts))),
            Stream(parts + 1, y_out.cons(tile=shim_tile(lib, c)), [ys[0]], drain=True,
                   then=tuple((parts + 1 + j, ys[j]) for j in range(1, parts))),
        ]  # fmt: skip
    return stream_program(args, streams, workers)


def params(rows: int, heads: int | list[int], head_dim: int) -> dict[str, Any]:
    """`heads`: of the one tensor, or of each (a list) when the launch rotates several."""
    return {"rows": rows, "head_dim": head_dim, "heads": heads, **row_cores(rows)}


def flops(launch: Launch, args: list[ArgSpec]) -> int:
    """x1*cos - x2*sin: two products and a sum per element of every output."""
    return 3 * sum(math.prod(out.shape) for out in args[len(launch.inputs) :])


OP = Op("rope", design, kernel, flops)
