"""GEMM y[M,N] = x[M,K] @ w[N,K]^T (aierun/ops/matmul.py, kernels_src/gemm.cc).

One core computes TM x TN output tiles, accumulating K / TK products in an fp32
buffer. The shim DMA cuts the tiles out of the row-major host buffers (4-D access
patterns, one phase per M block, so that only three DMA tasks are live at a time):
x's k-tiles are replayed for every n-tile, w is read in [TN, TK] tiles of the
Hugging Face [out, in] layout (the kernel transposes the 8x8 blocks it feeds to
the mmul unit).

Core memory at TM = 32: x 2 x 4 KiB, w 2 x 8 KiB, y 2 x 4 KiB, acc 8 KiB = 40 KiB
(TM = 64 would need 64 KiB before the stack: more than the core has)."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiebuild.designs.common import (
    CoreBuffer,
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    tap,
    tiles,
)
from aiebuild.specs import TILE
from aierun.abi import BF16, ArgSpec, Launch

ROWS = 32  # TM: rows of x per output tile


def tile_m(launch: Launch) -> int:
    return min(launch.params["M"], ROWS)


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object("gemm.cc", {"TM": tile_m(launch), "TK": TILE, "TN": TILE})


def core_buffers(launch: Launch, args: list[ArgSpec]) -> list[CoreBuffer]:
    """x tiles in, w tiles in, y tiles out, the fp32 accumulator (checks the tiling)."""
    p, tm = launch.params, tile_m(launch)
    for extent, tile, what in ((p["M"], tm, "M"), (p["K"], TILE, "K"), (p["N"], TILE, "N")):
        tiles(extent, tile, what)
    return [
        CoreBuffer("a_in", (tm, TILE), BF16),
        CoreBuffer("b_in", (TILE, TILE), BF16),
        CoreBuffer("c_out", (tm, TILE), BF16),
        CoreBuffer("acc", (tm * TILE,), np.dtype(np.float32), kind="buffer"),
    ]


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_

    m, k, n = launch.params["M"], launch.params["K"], launch.params["N"]
    tm = tile_m(launch)
    m_tiles, k_tiles, n_tiles = tiles(m, tm, "M"), tiles(k, TILE, "K"), tiles(n, TILE, "N")
    a, b, c, acc = core_buffers(launch, args)
    a_in, b_in, c_out, accumulator = (buf.make(lib) for buf in (a, b, c, acc))
    obj, suffix = kernel(launch, args).name, f"{tm}x{TILE}x{TILE}"
    zero = lib.Kernel(f"gemm_zero_f32_{suffix}", obj, [acc.type])
    mac = lib.Kernel(f"gemm_mac_bf16_{suffix}", obj, [a.type, b.type, acc.type])
    store = lib.Kernel(f"gemm_store_bf16_{suffix}", obj, [acc.type, c.type])

    def core(xs, ws, ys, total, zero_fn, mac_fn, store_fn):
        for _ in range_(m_tiles * n_tiles):
            zero_fn(total)
            for _ in range_(k_tiles):
                x, w = xs.acquire(1), ws.acquire(1)
                mac_fn(x, w, total)
                xs.release(1)
                ws.release(1)
            out = ys.acquire(1)
            store_fn(total, out)
            ys.release(1)

    worker = lib.Worker(
        core, [a_in.cons(), b_in.cons(), c_out.prod(), accumulator, zero, mac, store]
    )
    x_dims, w_dims, y_dims = args[0].shape, args[1].shape, args[2].shape
    # Phase i = M block i: x tiles [n (replay), k, row, col]; all of w [n, k, row, col];
    # y [n, row, col].
    x_taps = [
        tap(x_dims, i * tm * k, [n_tiles, k_tiles, tm, TILE], [0, TILE, k, 1])
        for i in range(m_tiles)
    ]
    w_taps = [tap(w_dims, 0, [n_tiles, k_tiles, TILE, TILE], [TILE * k, TILE, k, 1])] * m_tiles
    y_taps = [
        tap(y_dims, i * tm * n, [1, n_tiles, tm, TILE], [0, TILE, n, 1]) for i in range(m_tiles)
    ]
    fills = [(a_in.prod(), x_taps), (b_in.prod(), w_taps)]
    return stream_program(args, fills, [(c_out.cons(), y_taps)], [worker])
