"""GEMV y[N] = w[N,K] @ x[K] (aierun/ops/matmul.py with M = 1, kernels_src/gemv.cc).

x stays resident in the core; w streams in [TN, TK] tiles and each TN-row block
accumulates its K / TK partial dot products in fp32 before it is written, as
bf16 or (LM head logits) as fp32, following the output argument's dtype."""

from __future__ import annotations

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

ROWS = 32  # TN: weight rows per tile (32 x 64 bf16 = 4 KiB)


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object("gemv.cc", {"K": launch.params["K"], "TN": ROWS, "TK": TILE})


def symbol(launch: Launch, out_dtype: str) -> str:
    """The object has a bf16-output and an fp32-output entry point (LM head logits)."""
    return f"gemv_bf16_{launch.params['K']}x{ROWS}x{TILE}_{out_dtype}"


def design(launch: Launch, args: list[ArgSpec]) -> str:
    lib = iron()
    from aie.iron.controlflow import range_

    _, w, y = args
    k, n = launch.params["K"], launch.params["N"]
    k_tiles, n_tiles = tiles(k, TILE, "K"), tiles(n, ROWS, "N")
    x_ty, w_ty, y_ty = tensor(k, BF16), tensor((ROWS, TILE), BF16), tensor(ROWS, y.np_dtype)
    x_in, w_in = lib.ObjectFifo(x_ty, name="x_in", depth=1), lib.ObjectFifo(w_ty, name="w_in")
    y_out = lib.ObjectFifo(y_ty, name="y_out")
    gemv = lib.Kernel(symbol(launch, y.dtype), kernel(launch, args).name, [x_ty, w_ty, y_ty, int])

    def core(xs, ws, ys, fn):
        vector = xs.acquire(1)
        for _ in range_(n_tiles):
            out = ys.acquire(1)
            for step in range(k_tiles):  # unrolled: the k index is a compile-time constant
                block = ws.acquire(1)
                fn(vector, block, out, step)
                ws.release(1)
            ys.release(1)
        xs.release(1)

    worker = lib.Worker(core, [x_in.cons(), w_in.cons(), y_out.prod(), gemv])
    w_tap = tap(w.shape, 0, [n_tiles, k_tiles, ROWS, TILE], [ROWS * k, TILE, k, 1])
    fills = [(x_in.prod(), None), (w_in.prod(), [w_tap])]
    return stream_program(args, fills, [(y_out.cons(), None)], [worker])
