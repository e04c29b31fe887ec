"""GEMM y[M,N] = x[M,K] @ w[N,K]^T (aierun/ops/matmul.py, kernels_src/gemm.cc).

One core computes TM x TN output tiles, accumulating K / TK products in an fp32
buffer. The shim DMA cuts the tiles out of the row-major host buffers (4-D access
patterns, one per M block): x's k-tiles are replayed for every n-tile, w is read
in [TN, TK] tiles of the Hugging Face [out, in] layout (the kernel transposes the
8x8 blocks it feeds to the mmul unit)."""

from __future__ import annotations

import numpy as np

from aiebuild.designs.common import (
    TILE,
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    tap,
    tensor,
    tiles,
)
from aierun.abi import BF16, ArgSpec, Launch


def tile_m(launch: Launch) -> int:
    return min(launch.params["M"], TILE)


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object("gemm.cc", {"TM": tile_m(launch), "TK": TILE, "TN": TILE})


def design(launch: Launch, args: list[ArgSpec]) -> str:
    lib = iron()
    from aie.iron.controlflow import range_

    m, k, n = launch.params["M"], launch.params["K"], launch.params["N"]
    tm = tile_m(launch)
    m_tiles, k_tiles, n_tiles = tiles(m, tm, "M"), tiles(k, TILE, "K"), tiles(n, TILE, "N")
    a_ty, b_ty = tensor((tm, TILE), BF16), tensor((TILE, TILE), BF16)
    c_ty, acc_ty = tensor((tm, TILE), BF16), tensor(tm * TILE, np.dtype(np.float32))
    a_in, b_in = lib.ObjectFifo(a_ty, name="a_in"), lib.ObjectFifo(b_ty, name="b_in")
    c_out = lib.ObjectFifo(c_ty, name="c_out")
    suffix = f"{tm}x{TILE}x{TILE}"
    zero = lib.Kernel(f"gemm_zero_f32_{suffix}", kernel(launch, args).name, [acc_ty])
    mac = lib.Kernel(f"gemm_mac_bf16_{suffix}", kernel(launch, args).name, [a_ty, b_ty, acc_ty])
    store = lib.Kernel(f"gemm_store_bf16_{suffix}", kernel(launch, args).name, [acc_ty, c_ty])
    acc = lib.Buffer(acc_ty, name="acc")

    def core(a, b, c, accumulator, zero_fn, mac_fn, store_fn):
        for _ in range_(m_tiles * n_tiles):
            zero_fn(accumulator)
            for _ in range_(k_tiles):
                x, w = a.acquire(1), b.acquire(1)
                mac_fn(x, w, accumulator)
                a.release(1)
                b.release(1)
            out = c.acquire(1)
            store_fn(accumulator, out)
            c.release(1)

    worker = lib.Worker(core, [a_in.cons(), b_in.cons(), c_out.prod(), acc, zero, mac, store])
    x_dims, w_dims, y_dims = args[0].shape, args[1].shape, args[2].shape
    # Per M block: x tiles [n (replay), k, row, col]; all of w [n, k, row, col]; y [n, row, col].
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
