"""GEMV y[N] = w[N,K] @ x[K] (aierun/ops/matmul.py with M = 1, kernels_src/gemv.cc).

x stays resident in the core; w streams in [TN, TK] tiles and each TN-row block
accumulates its K / TK partial dot products in fp32 (in a state buffer that also
counts the k tiles, so the core's k loop stays a loop instead of K / TK unrolled
calls in the 16 KiB program memory) before it is written, as bf16 or (LM head
logits) as fp32, following the output argument's dtype.

An LM-head partition binds a slice (`w_lm[3]`, `logits[3]`): the runtime sequence
takes the whole host argument and the access patterns start at the slice."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiebuild.designs.common import (
    CoreBuffer,
    KernelObject,
    iron,
    kernel_object,
    slice_offset,
    stream_program,
    tap,
    tiles,
)
from aiebuild.specs import TILE
from aierun.abi import BF16, ArgSpec, Launch

ROWS = 32  # TN: weight rows per tile (32 x 64 bf16 = 4 KiB)


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object("gemv.cc", {"K": launch.params["K"], "TN": ROWS, "TK": TILE})


def symbol(launch: Launch, out_dtype: str) -> str:
    """The object has a bf16-output and an fp32-output entry point (LM head logits)."""
    return f"gemv_bf16_{launch.params['K']}x{ROWS}x{TILE}_{out_dtype}"


def core_buffers(launch: Launch, args: list[ArgSpec]) -> list[CoreBuffer]:
    """x (resident), w tiles in, y blocks out, the state [TN partial sums | k counter]."""
    k, n = launch.params["K"], launch.params["N"]
    tiles(k, TILE, "K")
    tiles(n, ROWS, "N")
    return [
        CoreBuffer("x_in", (k,), BF16, depth=1),
        CoreBuffer("w_in", (ROWS, TILE), BF16),
        CoreBuffer("y_out", (ROWS,), args[2].np_dtype),
        CoreBuffer("state", (ROWS + 1,), np.dtype(np.float32), kind="state"),
    ]


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_

    _, w, y = args
    k, n = launch.params["K"], launch.params["N"]
    k_tiles, n_tiles = tiles(k, TILE, "K"), tiles(n, ROWS, "N")
    buffers = core_buffers(launch, args)
    x_in, w_in, y_out, state = (buf.make(lib) for buf in buffers)
    types = [buf.type for buf in buffers]
    gemv = lib.Kernel(symbol(launch, y.dtype), kernel(launch, args).name, types)

    def core(xs, ws, ys, counters, fn):
        vector = xs.acquire(1)
        for _ in range_(n_tiles):
            out = ys.acquire(1)
            for _ in range_(k_tiles):  # the kernel counts the k tiles in `counters`
                block = ws.acquire(1)
                fn(vector, block, out, counters)
                ws.release(1)
            ys.release(1)
        xs.release(1)

    worker = lib.Worker(core, [x_in.cons(), w_in.cons(), y_out.prod(), state, gemv])
    w_tap = tap(
        w.shape, slice_offset(launch, args, 1), [n_tiles, k_tiles, ROWS, TILE],
        [ROWS * k, TILE, k, 1],
    )  # fmt: skip
    y_tap = tap(y.shape, slice_offset(launch, args, 2), [1, 1, 1, n], [0, 0, 0, 1])
    fills = [(x_in.prod(), None), (w_in.prod(), [w_tap])]
    return stream_program(args, fills, [(y_out.cons(), [y_tap])], [worker])
