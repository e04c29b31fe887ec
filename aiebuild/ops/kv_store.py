"""The prefill's K and V written again as the KV cache decode reads (aierun/ops/kv_store.py,
kernels_src/kv_store.cc): rows [S, Hkv*Dh] of bf16 in, [Hkv, S, Dh] of fp32 out.

The rows are split into one consecutive block per column. Each column's core takes
its block of K and of V from its shim (the shim's two input channels, the core's
two), widens each object to fp32 and sends it back (the two output channels). The
shim's output pattern scatters each row's heads to their stretches of the cache:
per object of `rows` rows, sizes [rows, Hkv, Dh] with strides [Dh, S*Dh, 1]. A block
of more than SHIM_ITERATIONS (64) objects moves in phases: a pattern repeats at most that
often.
"""

from __future__ import annotations

import math
from typing import Any

from aiebuild.array.geometry import largest_divisor
from aiebuild.ops.common import (
    SHIM_ITERATIONS,
    KernelObject,
    Op,
    Stream,
    array,
    contiguous,
    core_tile,
    iron,
    kernel_object,
    output_elements,
    shim_tile,
    stream_program,
    tap,
    tensor,
)
from aiebuild.ops.rmsnorm import row_cores
from aierun.abi import ArgSpec, Launch

MAX_CHUNK = 2048  # elements per object: 4 KiB in, 8 KiB out; x2 fifos x depth 2


def object_rows(launch: Launch, width: int) -> int:
    """Rows per object: the largest divisor of a column's block that fits a chunk."""
    block = launch.params["rows"] // array(launch)[0]
    return largest_divisor(block, max(1, MAX_CHUNK // width))


def chunk(launch: Launch) -> int:
    width = launch.params["kv_heads"] * launch.params["head_dim"]
    return object_rows(launch, width) * width


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object("kv_store.cc", {"CHUNK": chunk(launch)})


def _scatter(cache: ArgSpec, first_row: int, objects: int, rows: int) -> Any:
    """`objects` objects of `rows` rows from row `first_row` on, each row's heads to
    their places in the [Hkv, S, Dh] cache."""
    heads, seq, dim = cache.shape
    return tap(cache.shape, first_row * dim, [objects, rows, heads, dim],
               [rows * dim, dim, seq * dim, 1])  # fmt: skip


def _widening_core(objects: int):
    range_ = iron().range_

    def core(k_in, v_in, k_out, v_out, widen):
        for _ in range_(objects):
            for into, out in ((k_in, k_out), (v_in, v_out)):
                widen(into.acquire(1), out.acquire(1))
                into.release(1)
                out.release(1)

    return core


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    columns, _ = array(launch)
    size, width = chunk(launch), args[0].shape[1]
    rows = size // width
    block = launch.params["rows"] // columns
    objects = block // rows
    phases = math.ceil(objects / SHIM_ITERATIONS)
    types = [tensor((size,), args[0].np_dtype), tensor((size,), args[2].np_dtype)]
    widen = lib.Kernel(f"widen_{size}", kernel(launch, args).name, types)
    streams, workers = [], []
    for c in range(columns):
        ins, outs = [], []
        for i, name in enumerate(("k", "v")):
            into = lib.ObjectFifo(tensor((size,), args[i].np_dtype), name=f"{name}{c}")
            out = lib.ObjectFifo(tensor((size,), args[2 + i].np_dtype), name=f"{name}_cache{c}")
            fills, drains = [], []
            for phase in range(phases):
                count = min(SHIM_ITERATIONS, objects - phase * SHIM_ITERATIONS)
                first = c * block + phase * SHIM_ITERATIONS * rows
                fills.append(contiguous(args[i].shape, first * width, count * size))
                drains.append(_scatter(args[2 + i], first, count, rows))
            streams.append(Stream(i, into.prod(tile=shim_tile(lib, c)), fills))
            streams.append(Stream(2 + i, out.cons(tile=shim_tile(lib, c)), drains, drain=True))
            ins.append(into.cons())
            outs.append(out.prod())
        workers.append(lib.Worker(_widening_core(objects), [*ins, *outs, widen],
                                  tile=core_tile(lib, c, 0)))  # fmt: skip
    return stream_program(args, streams, workers)


def params(rows: int, kv_heads: int, head_dim: int) -> dict[str, int]:
    """Rows over columns, one core per column widening its block of K and of V."""
    return {"kv_heads": kv_heads, "head_dim": head_dim, "rows": rows, **row_cores(rows)}


def flops(launch: Launch, args: list[ArgSpec]) -> int:
    return output_elements(launch, args)  # widened to fp32 (the DMAs move it in place)


OP = Op("kv_store", design, kernel, flops)
