"""GEMV y[N] = w[N,K] @ x[K] over the array (aierun/ops/matmul.py with M = 1,
kernels_src/gemv.cc).

Decode streams every weight once per token: the launch spreads w's rows over every
column's shim. Column c owns the rows [c * N / columns, (c + 1) * N / columns); its
shim streams them as (core_rows * TN) x TK blocks, which its memory tile splits into
one TN x TK tile per core of the column (core r takes every core_rows-th TN-row block
of the column). x stays resident in every core: one shim stream broadcast to all.
Each core accumulates a TN-row block's K / TK partial dot products in fp32 (in a
state buffer that also counts the k tiles, so the core's k loop stays a loop) and
writes the block as bf16 or, for the LM head logits, fp32 (the output argument's
dtype); the column's memory tile joins its cores' blocks into contiguous rows of y.

An LM-head partition binds a slice (`w_lm[3]`, `logits[3]`): the runtime sequence
takes the whole host argument and the access patterns start at the slice.
Core memory at K = 8192: x 16 KiB, w 2 x 4 KiB, y and state < 1 KiB."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiebuild.designs.common import (
    KernelObject,
    Stream,
    array,
    contiguous,
    core_tile,
    iron,
    kernel_object,
    mem_tile,
    scratch_buffer,
    shim_tile,
    slice_offset,
    stream_program,
    tap,
    tensor,
    tiles,
    whole,
)
from aiebuild.specs import GEMV_ROWS as TN
from aiebuild.specs import TILE as TK
from aierun.abi import BF16, ArgSpec, Launch


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object("gemv.cc", {"K": launch.params["K"], "TN": TN, "TK": TK})


def symbol(launch: Launch, out_dtype: str) -> str:
    """The object has a bf16-output and an fp32-output entry point (LM head logits)."""
    return f"gemv_bf16_{launch.params['K']}x{TN}x{TK}_{out_dtype}"


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_
    _, w, y = args
    k, n = launch.params["K"], launch.params["N"]
    columns, rows = array(launch)
    k_tiles = tiles(k, TK, "K")
    per_core = tiles(n, columns * rows * TN, "N (per core of the array)")
    per_column = n // columns
    x_ty, w_ty = tensor((k,), BF16), tensor((TN, TK), BF16)
    y_ty, state_ty = tensor((TN,), y.np_dtype), tensor((TN + 1,), np.dtype(np.float32))
    gemv = lib.Kernel(symbol(launch, y.dtype), kernel(launch, args).name,
                      [x_ty, w_ty, y_ty, state_ty])  # fmt: skip

    x_in = lib.ObjectFifo(x_ty, depth=1, name="x")
    w_in = [lib.ObjectFifo(tensor((rows * TN, TK), BF16), name=f"w_in{c}") for c in range(columns)]
    w_core = [
        w_in[c].cons().split([r * TN * TK for r in range(rows)], tile=mem_tile(lib, c),
                             obj_types=[w_ty] * rows, names=[f"w{c}_{r}" for r in range(rows)])
        for c in range(columns)
    ]  # fmt: skip
    y_out = [lib.ObjectFifo(tensor((rows * TN,), y.np_dtype), name=f"y{c}")
             for c in range(columns)]  # fmt: skip
    y_core = [
        y_out[c].prod().join([r * TN for r in range(rows)], tile=mem_tile(lib, c),
                             obj_types=[y_ty] * rows, names=[f"y{c}_{r}" for r in range(rows)])
        for c in range(columns)
    ]  # fmt: skip

    def core(xs, ws, ys, counters, fn):
        vector = xs.acquire(1)
        for _ in range_(per_core):
            out = ys.acquire(1)
            for _ in range_(k_tiles):  # the kernel counts the k tiles in `counters`
                block = ws.acquire(1)
                fn(vector, block, out, counters)
                ws.release(1)
            ys.release(1)
        xs.release(1)

    workers = [
        lib.Worker(core, [x_in.cons(), w_core[c][r].cons(), y_core[c][r].prod(),
                          scratch_buffer(lib, f"state_{c}_{r}", (TN + 1,), np.dtype(np.float32)),
                          gemv], tile=core_tile(lib, c, r))
        for c in range(columns) for r in range(rows)
    ]  # fmt: skip
    w_at, y_at = slice_offset(launch, args, 1), slice_offset(launch, args, 2)
    streams = [
        Stream(0, x_in.prod(tile=shim_tile(lib, 0)), [whole(args[0])]),
        *(Stream(1, w_in[c].prod(tile=shim_tile(lib, c)), [
            tap(w.shape, w_at + c * per_column * k, [per_core, k_tiles, rows * TN, TK],
                [rows * TN * k, TK, k, 1])]) for c in range(columns)),
        *(Stream(2, y_out[c].cons(tile=shim_tile(lib, c)),
                 [contiguous(y.shape, y_at + c * per_column, per_column)], drain=True)
          for c in range(columns)),
    ]  # fmt: skip
    return stream_program(args, streams, workers)
