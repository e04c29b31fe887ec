"""GEMM y[M,N] = x[M,K] @ w[N,K]^T over the array (aierun/ops/matmul.py, kernels_src/gemm.cc).

The launch's `columns` x `core_rows` cores (aiebuild/specs.py) compute TM x TN output
tiles, each accumulating its K / TK products in an fp32 buffer. Core (c, r) owns the
tiles (m, n) with m = r (mod core_rows) and n in column c's consecutive share of the
n tiles, so:
- the x tiles of m-block r are broadcast along core row r: one shim stream, forwarded
  by a memory tile to the `columns` cores of that row (entering at the shims of
  columns without cores when there are enough, else at every other column: no shim
  and no memory tile carries more than two input streams);
- the w tiles of column c's n tiles are broadcast down column c: its shim stream,
  forwarded by its memory tile to the column's `core_rows` cores;
- the y tiles of a column's cores are joined in its memory tile into one
  (core_rows * TM) x TN block, contiguous rows of y, drained by its shim.
Per core: 2 input channels (x, w) and 1 output; per memory tile at most 1 + 1 +
core_rows = 6 input channels. One phase of the runtime sequence per round of m-blocks
(`core_rows` of them) keeps 2-3 live tasks per shim; within it each core walks its n
tiles (the x stream replays its m-block per n tile, a repeat of the shim pattern).

The shims read x and w in chunks of KC = 256 columns (`chunk_depth`: runs of 512 B, whole
npu2 bursts), and the memory tiles forward each chunk to the cores as its KC / TK tiles
(a forward into smaller objects, iron_record.Link.resizes), each in the kernel's mmul
blocks (MR x 8 of x, 8 x 8 of w, k block major, `blocked`), so that each operand is one
512-bit load on the core. Memory tile: x and w chunks 2 x 32 KiB per stream.

Tiles: TM = 64 (32 when M is not a multiple of 64), TK = 32, TN = 64. Core memory:
x 2 x 4 KiB, w 2 x 4 KiB, y 2 x 8 KiB, fp32 accumulator 16 KiB, and for bfp16 the
scratch of the call's converted operands, (TM + TN) * TK / 8 blocks of 9 bytes = 2.25 KiB:
50.25 KiB of 64."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aiebuild.array.geometry import COLUMNS, CORE_ROWS, cores, largest_divisor
from aiebuild.ops.common import (
    KernelObject,
    Op,
    Stream,
    array,
    core_tile,
    iron,
    joined_columns,
    kernel_object,
    mem_tile,
    scratch_buffer,
    shim_tile,
    stream_program,
    tap,
    tensor,
    tiles,
)
from aierun.abi import BF16, ArgSpec, Launch

# The shim's contiguous run per row of x and w: the longest npu2 burst, 512 B
# (timing.SHIM_MAX_BURST_BYTES); a shorter run pays a whole burst's overhead.
CHUNK_BYTES = 512
# Every GEMM and GEMV dimension is tiled in blocks of TILE elements on the cores
# (specs.check_tileable refuses a model that does not divide).
TILE = 64
TK, TN = 32, TILE


def tile_m(launch: Launch) -> int:
    return 64 if launch.params["M"] % 64 == 0 else 32


def x_columns(columns: int, rows: int) -> list[int]:
    """The shim / memory-tile column where core row r's x stream enters: the columns
    without cores when there are enough, else spread over the core columns (then
    columns >= rows, so the columns differ)."""
    if columns + rows <= COLUMNS:
        return [columns + r for r in range(rows)]
    return [r * columns // rows for r in range(rows)]


def mma(launch: Launch) -> str:
    """-D AIEK_MMA: the launch's mmul mode (specs.GEMM_MMA)."""
    return launch.params.get("mma", "bf16")


# The mmul block: MR rows of x (8 for the bfp16 8x8x8 mmul, 4 for bf16 4x8x8) by MS = 8
# of k; w's blocks are always 8 x 8 (kernels_src/gemm.cc).
MS = 8
BFP16_BLOCK_BYTES = 9  # 8 int8 mantissas and a shared exponent (gemm.cc bfp16ebs8)


def block_rows(launch: Launch) -> int:
    return 8 if mma(launch) == "bfp16" else 4


def blocked(rows: int, depth: int, block_rows: int) -> list[tuple[int, int]]:
    """dims_to_stream reading a row-major rows x depth chunk as block_rows x MS blocks,
    k block major (block (i, k) after (i - 1, k)), each block row-major: the layout
    gemm.cc's mmuls load. Every TK / MS consecutive k blocks are one core tile, so a
    chunk of depth KC streams as its KC / TK tiles in k order, each in that layout."""
    return [
        (depth // MS, MS), (rows // block_rows, block_rows * depth), (block_rows, depth), (MS, 1)
    ]  # fmt: skip


def chunk_depth(k: int) -> int:
    """KC: the k extent of the x and w chunks the shims move into the memory tiles, so
    that each shim run is CHUNK_BYTES (a whole npu2 burst, timing.py) when K allows."""
    return math.gcd(k, CHUNK_BYTES // BF16.itemsize)


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object("gemm.cc", {"TM": tile_m(launch), "TK": TK, "TN": TN, "MMA": mma(launch)})


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_
    m, k, n = launch.params["M"], launch.params["K"], launch.params["N"]
    columns, rows = array(launch)
    tm = tile_m(launch)
    m_rounds = tiles(m, tm * rows, "M (per round of core rows)")
    n_rounds = tiles(n, TN * columns, "N (per round of columns)")
    k_tiles = tiles(k, TK, "K")
    kc = chunk_depth(k)
    x_ty, w_ty, y_ty = tensor((tm, TK), BF16), tensor((TN, TK), BF16), tensor((tm, TN), BF16)
    acc_ty = tensor((tm * TN,), np.dtype(np.float32))
    obj, suffix = kernel(launch, args).name, f"{tm}x{TK}x{TN}_{mma(launch)}"
    # bfp16: the core scratch the mac converts its x and w tiles into.
    q_shape = ((tm + TN) * TK // MS * BFP16_BLOCK_BYTES,)
    scratch = [tensor(q_shape, np.dtype(np.uint8))] if mma(launch) == "bfp16" else []
    zero = lib.Kernel(f"gemm_zero_f32_{suffix}", obj, [acc_ty])
    mac = lib.Kernel(f"gemm_mac_bf16_{suffix}", obj, [x_ty, w_ty, acc_ty, *scratch])
    store = lib.Kernel(f"gemm_store_bf16_{suffix}", obj, [acc_ty, y_ty])

    # The memory tiles receive chunks of KC columns and stream each to the cores as
    # its KC / TK tiles in the kernel's mmul blocks (a forward into smaller objects).
    x_column = x_columns(columns, rows)
    x_dims, w_dims = blocked(tm, kc, block_rows(launch)), blocked(TN, kc, MS)
    x_in = [lib.ObjectFifo(tensor((tm, kc), BF16), name=f"x_in{r}") for r in range(rows)]
    x_row = [x_in[r].cons().forward(tile=mem_tile(lib, x_column[r]), obj_type=x_ty,
                                    name=f"x{r}", dims_to_stream=x_dims)
             for r in range(rows)]  # fmt: skip
    w_in = [lib.ObjectFifo(tensor((TN, kc), BF16), name=f"w_in{c}") for c in range(columns)]
    w_col = [w_in[c].cons().forward(tile=mem_tile(lib, c), obj_type=w_ty, name=f"w{c}",
                                    dims_to_stream=w_dims) for c in range(columns)]  # fmt: skip
    y_out, y_core = joined_columns(lib, "y", columns, rows, (tm, TN), BF16)

    def core(xs, ws, ys, acc, zero_fn, mac_fn, store_fn, *q):
        for _ in range_(m_rounds * n_rounds):
            zero_fn(acc)
            for _ in range_(k_tiles):
                x, w = xs.acquire(1), ws.acquire(1)
                mac_fn(x, w, acc, *q)
                xs.release(1)
                ws.release(1)
            out = ys.acquire(1)
            store_fn(acc, out)
            ys.release(1)

    workers = [
        lib.Worker(core, [x_row[r].cons(), w_col[c].cons(), y_core[c][r].prod(),
                          scratch_buffer(lib, f"acc_{c}_{r}", (tm * TN,), np.dtype(np.float32)),
                          zero, mac, store,
                          *(scratch_buffer(lib, f"q_{c}_{r}", q_shape, np.dtype(np.uint8))
                            for _ in scratch)], tile=core_tile(lib, c, r))
        for c in range(columns) for r in range(rows)
    ]  # fmt: skip
    x, w, y = (a.shape for a in args)
    # Phase = round i of m-blocks. x of row r: its m-block's k chunks, replayed for
    # every n tile of the round (stride 0: a repeat); w of column c: its n tiles' k
    # chunks; y of column c: (rows * tm) rows by its n tiles.
    k_chunks = k // kc
    x_taps = [[tap(x, (i * rows + r) * tm * k, [n_rounds, k_chunks, tm, kc], [0, kc, k, 1])
               for i in range(m_rounds)] for r in range(rows)]  # fmt: skip
    w_tap = [tap(w, c * n_rounds * TN * k, [n_rounds, k_chunks, TN, kc], [TN * k, kc, k, 1])
             for c in range(columns)]  # fmt: skip
    y_taps = [[tap(y, i * rows * tm * n + c * n_rounds * TN, [1, n_rounds, rows * tm, TN],
                   [0, TN, n, 1]) for i in range(m_rounds)]
              for c in range(columns)]  # fmt: skip
    streams = [
        *(Stream(0, x_in[r].prod(tile=shim_tile(lib, x_column[r])), x_taps[r])
          for r in range(rows)),
        *(Stream(1, w_in[c].prod(tile=shim_tile(lib, c)), [w_tap[c]] * m_rounds)
          for c in range(columns)),
        *(Stream(2, y_out[c].cons(tile=shim_tile(lib, c)), y_taps[c], drain=True)
          for c in range(columns)),
    ]  # fmt: skip
    return stream_program(args, streams, workers)


def params(m: int, k: int, n: int, mma: str = "bf16") -> dict[str, int | str]:
    """A GEMM's cores: output tile columns over array columns, 64-row blocks of x over
    core rows, and its matmul mode `mma` (specs.GEMM_MMA)."""
    spread = cores(
        largest_divisor(n // TILE, COLUMNS), largest_divisor(max(m // TILE, 1), CORE_ROWS)
    )
    return {"M": m, "K": k, "N": n, "mma": mma, **spread}


def flops(launch: Launch, args: list[ArgSpec]) -> int:
    p = launch.params
    return 2 * p["M"] * p["N"] * p["K"]


OP = Op("gemm", design, kernel, flops)
