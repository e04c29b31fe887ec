"""Rotary embedding (aierun/ops/rope.py, kernels_src/rope.cc): one row of all heads
and that position's table row (cos | sin) per kernel call."""

from __future__ import annotations

from typing import Any

from aiebuild.designs.common import (
    CoreBuffer,
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    streaming_core,
)
from aierun.abi import BF16, ArgSpec, Launch


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    params = {"HEADS": launch.params["heads"], "DH": launch.params["head_dim"]}
    return kernel_object("rope.cc", {**params, "TABLE_F32": args[1].dtype == "f32"})


def symbol(launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/rope.cc composes it: the table's dtype, heads x head_dim."""
    return f"rope_{args[1].dtype}_{launch.params['heads']}x{launch.params['head_dim']}"


def core_buffers(launch: Launch, args: list[ArgSpec]) -> list[CoreBuffer]:
    """x rows in, table rows in, rotated rows out."""
    heads, dim = launch.params["heads"], launch.params["head_dim"]
    return [
        CoreBuffer("x_in", (heads * dim,), BF16),
        CoreBuffer("table_in", (dim,), args[1].np_dtype),
        CoreBuffer("y_out", (heads * dim,), BF16),
    ]


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    buffers = core_buffers(launch, args)
    x_in, t_in, y_out = (buf.make(lib) for buf in buffers)
    rotate = lib.Kernel(symbol(launch, args), kernel(launch, args).name, [b.type for b in buffers])
    steps = launch.params["rows"]
    worker = lib.Worker(streaming_core(steps), [x_in.cons(), t_in.cons(), y_out.prod(), rotate])
    fills = [(x_in.prod(), None), (t_in.prod(), None)]
    return stream_program(args, fills, [(y_out.cons(), None)], [worker])
