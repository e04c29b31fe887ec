"""Rotary embedding (aierun/ops/rope.py, kernels_src/rope.cc): one row of all heads
and that position's table row (cos | sin) per kernel call."""

from __future__ import annotations

from aiebuild.designs.common import (
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    streaming_core,
    tensor,
)
from aierun.abi import BF16, ArgSpec, Launch


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    params = {"HEADS": launch.params["heads"], "DH": launch.params["head_dim"]}
    return kernel_object("rope.cc", {**params, "TABLE_F32": args[1].dtype == "f32"})


def symbol(launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/rope.cc composes it: the table's dtype, heads x head_dim."""
    return f"rope_{args[1].dtype}_{launch.params['heads']}x{launch.params['head_dim']}"


def design(launch: Launch, args: list[ArgSpec]) -> str:
    lib = iron()
    rows, heads, dim = launch.params["rows"], launch.params["heads"], launch.params["head_dim"]
    row, table_row = tensor(heads * dim, BF16), tensor(dim, args[1].np_dtype)
    x_in = lib.ObjectFifo(row, name="x_in")
    t_in = lib.ObjectFifo(table_row, name="table_in")
    y_out = lib.ObjectFifo(row, name="y_out")
    rotate = lib.Kernel(symbol(launch, args), kernel(launch, args).name, [row, table_row, row])

    worker = lib.Worker(streaming_core(rows), [x_in.cons(), t_in.cons(), y_out.prod(), rotate])
    fills = [(x_in.prod(), None), (t_in.prod(), None)]
    return stream_program(args, fills, [(y_out.cons(), None)], [worker])
