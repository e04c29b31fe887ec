"""GEMV y[N] = w[N,K] @ x[K] over the array (aierun/ops/matmul.py with M = 1,
kernels_src/gemv.cc).

Decode streams every weight once per token, so the launch is bound by the shim
channels that carry w: it uses both input channels of every column's shim for
weights, except one that broadcasts x (resident in every core) — 2 * columns - 1
weight streams, each feeding one core straight from its shim (the first two cores
of a column, no memory tile: a core's vector MACs consume weights several times faster
than one shim channel delivers them). Stream s owns a consecutive run of TN-row
blocks of w (the runs differ by at most one block) and drains its rows of y from
the same core. Each core accumulates a block's rows in fp32 lane sums over its K / TK steps (in a
state buffer that also counts the k tiles, so the core's k loop stays a loop), reduces
each row once and writes it as bf16 or, for the LM head logits, fp32 (the output
argument's dtype). A step's rows are TK = 256 bf16, 512 B: whole shim bursts.
A run longer than the 64 iterations a shim pattern allows is moved in several
phases. Core memory at K = 8192: x 16 KiB, w 2 x 8 KiB, state 2.1 KiB, y < 1 KiB
(with the SwiGLU epilogue's 32-row steps w 2 x 16 KiB, state 4.2 KiB).

Weights in a GGUF block type (the w argument's dtype q4_0, q4_1 or q8_0) are preloaded
in the layout of aierun/ops/quant.py: one record per (TN-row block, k step) holding
the step's quants and then its fp32 block scales, so a core step is one contiguous
run of whole 512-B bursts (q4_0 2560 B, q4_1 3072 B, q8_0 4608 B at TK = 256) and a
stream's run of blocks is one linear transfer. The core dequantizes each block of 32
as it multiplies (kernels_src/gemv.cc AIEK_WFMT).

The "swiglu" epilogue (launch param `epilogue`) makes SwiGLU's gate and up GEMVs and
their silu_mul one launch, saving the two reconfigurations of the array the separate
launches would cost: w is gate and up with their rows interleaved at preload
(aierun/abi.py, SWIGLU_GROUP = 16 rows of each in turn), a core step takes 32 rows (16
of gate, the same 16 of up) and a block writes the 16 values silu(g) * u, g and u
rounded to bf16 first as the separate GEMVs wrote them (kernels_src/gemv.cc
AIEK_SWIGLU, aierun/ops/matmul.py gemv). N counts the rows of w, so y has N / 2.

The "rmsnorm" prologue (launch param `prologue`, with `eps`) takes the RMSNorm before
a GEMV into its launch: x arrives as the fp32 residual stream, followed in the same
fifo by the norm weight (widened exactly to fp32 at preload, so both objects have one
type: a core has only two input channels, for x and w), and every core normalizes its
own copy into a bf16 xn before its GEMV calls (kernels_src/gemv.cc AIEK_RMSNORM, the
arithmetic of rmsnorm.cc). It needs room for x, the weight and xn beside two w steps
(`prologue_fits`); where a core has none, the RMSNorm stays a launch of its own. The
"add_rmsnorm" prologue also takes the residual add before the RMSNorm: its fifo brings
o (the GEMV before it wrote o rounded to bf16 as fp32: the "rounded" epilogue), x and
the weight, every core sums h = o + x for itself, and the first core writes h out for
the launches after. Decode's QKV GEMV takes the add after down the same way: d (the
down GEMV's, rounded) and h, whose sum x it writes for the layer's later launches.

A launch may multiply x by several weights of one type and K, each into its own output
(decode's Q, K and V projections: one launch where three would cost two more
reconfigurations): its args are x (or a prologue's vectors), the weights, then their
outputs. Each weight stream serves one weight (`share_streams`: the part whose streams
carry the most blocks each gets the next one), so a stream's run and its drain stay
within one argument."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiebuild.array.geometry import COLUMNS, cores
from aiebuild.array.rules import CORE_DATA_MEMORY, DEFAULT_STACK
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
    once,
    scratch_buffer,
    shim_tile,
    slice_offset,
    stream_program,
    tap,
    tensor,
    tiles,
    whole,
)
from aiebuild.ops.gemm import flops
from aierun.abi import BF16, SWIGLU, SWIGLU_GROUP, ArgSpec, Launch, interleaved_layout
from aierun.ops import quant

TN = 16  # output rows per core step
# Columns of w per core step: 256 bf16 = 512 B, the longest shim burst on npu2, so each
# row of a block is read as whole bursts (aiebuild/array/timing.py prices shorter runs
# higher). Shapes whose K is no multiple of it take the largest power of two dividing K.
TK_MAX = 256
LANES = 32  # bf16 per 512-bit load: the state keeps this many fp32 lane sums per row


def tk(k: int) -> int:
    """Columns per core step: TK_MAX, or the largest power of two dividing K below it."""
    return min(TK_MAX, k & -k)


def step_rows(epilogue: str | None) -> int:
    """Rows of w per core step: TN, or a group of gate rows and one of up for SwiGLU."""
    return 2 * SWIGLU_GROUP if epilogue == SWIGLU else TN


def block_values(epilogue: str | None) -> int:
    """Values of y a block writes: one per row, or one per gate and up row pair."""
    return SWIGLU_GROUP if epilogue == SWIGLU else TN


def state_floats(rows: int) -> int:
    """The kernel's state: a step's rows of LANES partial sums each, their staged dot
    products and the k-tile counter (gemv.cc State)."""
    return rows * (LANES + 1) + 1


# The launch's `prologue`: RMSNorm of x, or the residual add and then RMSNorm of its sum.
RMSNORM, ADD_RMSNORM = "rmsnorm", "add_rmsnorm"
# The `epilogue` that writes each row rounded to bf16, as fp32: a prologue's fifo input.
ROUNDED = "rounded"


def prologue_vectors(prologue: str | None) -> int:
    """The fp32 vectors a prologue receives in the x fifo: x and the norm weight, with
    the add o first."""
    return {None: 1, RMSNORM: 2, ADD_RMSNORM: 3}[prologue]


def weight_layout(k: int, dtype: str, epilogue: str | None = None) -> str:
    """The ArgSpec layout of a GEMV weight of this type (rows as the checkpoint's for
    bf16, the records of aierun/ops/quant.py for a block type); SwiGLU's gate and up
    rows interleaved first."""
    rows = "rowmajor" if dtype == "bf16" else quant.layout(step_rows(epilogue), tk(k))
    return interleaved_layout(SWIGLU_GROUP, rows) if epilogue == SWIGLU else rows


def weight_shape(rows: int, k: int, dtype: str) -> tuple[int, int]:
    """A weight argument's shape: [rows, K] bf16, or [rows, bytes per row] of blocks."""
    return (rows, k) if dtype == "bf16" else (rows, quant.device_row_bytes(dtype, k))


def record_bytes(k: int, dtype: str, rows: int) -> int:
    """Bytes of w one core step reads (a rows x TK tile)."""
    if dtype == "bf16":
        return rows * tk(k) * BF16.itemsize
    return rows * quant.device_row_bytes(dtype, tk(k))


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    k, epilogue = launch.params["K"], launch.params.get("epilogue")
    w = args[weight_positions(launch)[0]]
    params = {"K": k, "TN": step_rows(epilogue), "TK": tk(k), "WFMT": quant.WFMT[w.dtype]}
    if epilogue == SWIGLU:
        params["SWIGLU"] = True
    if epilogue == ROUNDED:
        params["ROUNDED"] = True
    prologue = launch.params.get("prologue")
    if prologue is not None:
        params |= {"RMSNORM": prologue_vectors(prologue) - 1, "EPS": float(launch.params["eps"])}
    return kernel_object("gemv.cc", params)


def symbol(launch: Launch, w_dtype: str, out_dtype: str, entry: str | None = None) -> str:
    """The object has a bf16-output and an fp32-output entry point (LM head logits),
    and with an epilogue its `_swiglu` or `_rounded` one; `entry` names another (the
    prologue's)."""
    k, epilogue = launch.params["K"], launch.params.get("epilogue")
    return f"gemv_{w_dtype}_{k}x{step_rows(epilogue)}x{tk(k)}_{entry or epilogue or out_dtype}"


def prologue_fits(
    k: int, w_dtype: str, epilogue: str | None = None, prologue: str = RMSNORM
) -> bool:
    """Whether a core holds a prologue's data beside its GEMV's: its fp32 vectors (K
    each, one fifo; with the add, the sum h too), xn (bf16, K), two w steps, its state,
    two y blocks and the default stack (the rules check counts the same)."""
    rows, vectors = step_rows(epilogue), prologue_vectors(prologue) + (prologue == ADD_RMSNORM)
    needed = (
        vectors * k * 4 + k * BF16.itemsize + 2 * record_bytes(k, w_dtype, rows)
        + state_floats(rows) * 4 + 2 * block_values(epilogue) * 4 + DEFAULT_STACK
    )  # fmt: skip
    return needed <= CORE_DATA_MEMORY


def weight_positions(launch: Launch) -> range:
    """Where the weights are among the launch's inputs: after the prologue's vectors
    (x alone without one), one per output but the add prologue's sum h (the last)."""
    prologue = launch.params.get("prologue")
    first = prologue_vectors(prologue)
    return range(first, first + len(launch.outputs) - (prologue == ADD_RMSNORM))


def stream_cores(columns: int, core_rows: int, blocks: int) -> list[tuple[int, int]]:
    """(column, core row) of each weight stream: core row 0 of column 0 (its shim's
    other channel carries x), then the first `core_rows` core rows of the next columns:
    both (the launches of our ELFs: two weight channels per shim), or one (upstream's
    layout, one weight channel per column: what tools/calibrate.py prices it in)."""
    cores = [(0, 0)] + [(c, r) for c in range(1, columns) for r in range(core_rows)]
    return cores[: min(len(cores), blocks)]


def runs(blocks: int, streams: int) -> list[range]:
    """Consecutive runs of blocks, one per stream, differing by at most one."""
    base, extra = divmod(blocks, streams)
    starts = [s * base + min(s, extra) for s in range(streams + 1)]
    return [range(starts[s], starts[s + 1]) for s in range(streams)]


def share_streams(blocks: list[int], streams: int) -> list[int]:
    """How many of `streams` each part of a several-weight GEMV gets (at least one):
    each further stream to the part whose streams carry the most blocks each, which
    makes the longest stream's run as short as it can be."""
    shares = [1] * len(blocks)
    for _ in range(streams - len(blocks)):
        busiest = max(range(len(blocks)), key=lambda j: -(-blocks[j] // shares[j]))
        shares[busiest] += 1
    return shares


def part_runs(blocks: list[int], streams: int) -> list[tuple[int, range]]:
    """(part, run of that part's blocks) of each stream, the parts' streams in order."""
    return [(j, run) for j, (count, share) in enumerate(zip(blocks, share_streams(blocks, streams),
                                                              strict=True))
            for run in runs(count, share)]  # fmt: skip


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_
    at = weight_positions(launch)
    weights, outputs = [args[i] for i in at], args[len(launch.inputs) :][: len(at)]
    w, y = weights[0], outputs[0]  # one kernel: every weight has w's type, every output y's
    k, epilogue = launch.params["K"], launch.params.get("epilogue")
    prologue = launch.params.get("prologue")
    vectors, add = prologue_vectors(prologue), prologue == ADD_RMSNORM
    columns, core_rows = array(launch)
    TK, rows = tk(k), step_rows(epilogue)  # noqa: N806 (the kernel's -D name)
    k_tiles = tiles(k, TK, "K")
    blocks = [tiles(weight.shape[0] if len(weights) > 1 else launch.params["N"], rows, "N")
              for weight in weights]  # fmt: skip
    cores = stream_cores(columns, core_rows, sum(blocks))
    stream_runs = part_runs(blocks, len(cores))
    record, values = record_bytes(k, w.dtype, rows), block_values(epilogue)
    # x, or a prologue's fp32 vectors (o, then x, then the norm weight): objects of one
    # fifo, which every core holds for the whole launch.
    x_ty = tensor((k,), np.dtype(np.float32) if prologue else BF16)
    xn_ty = tensor((k,), BF16)
    w_ty = tensor((rows, TK), BF16) if w.dtype == "bf16" else tensor((record,), w.np_dtype)
    y_ty = tensor((values,), y.np_dtype)
    state_ty = tensor((state_floats(rows),), np.dtype(np.float32))
    obj = kernel(launch, args).name
    gemv = lib.Kernel(symbol(launch, w.dtype, y.dtype), obj, [xn_ty, w_ty, y_ty, state_ty])
    if prologue:  # its entry point: the vectors (and h), then xn
        norm = lib.Kernel(symbol(launch, w.dtype, y.dtype, prologue), obj,
                          [x_ty] * (vectors + add) + [xn_ty])  # fmt: skip
    x_in = lib.ObjectFifo(x_ty, depth=vectors, name="x")
    h_out = lib.ObjectFifo(x_ty, depth=1, name="h") if add else None  # the first core's sum
    w_in = [lib.ObjectFifo(w_ty, name=f"w{s}") for s in range(len(cores))]
    y_out = [lib.ObjectFifo(y_ty, name=f"y{s}") for s in range(len(cores))]

    def body(count: int, first: bool):
        def core(xs, ws, ys, counters, fn, *prologue_args):
            if prologue:  # xn (no initial value: the prologue writes it), its kernel, h
                normalized, norm_fn, *h = prologue_args
                held = xs.acquire(vectors)
                sums = [h[0].acquire(1) if first else h[0]] if add else []
                norm_fn(*held, *sums, normalized)
                if add and first:
                    h[0].release(1)
                vector = normalized
            else:
                vector = xs.acquire(1)
            for _ in range_(count):
                out = ys.acquire(1)
                for _ in range_(k_tiles):  # the kernel counts the k tiles in `counters`
                    block = ws.acquire(1)
                    fn(vector, block, out, counters)
                    ws.release(1)
                ys.release(1)
            xs.release(vectors)

        return core

    def prologue_args(s: int) -> list[Any]:
        if not prologue:
            return []
        sums = [h_out.prod() if s == 0 else lib.Buffer(x_ty, name=f"h{s}")] if add else []
        return [lib.Buffer(xn_ty, name=f"xn{s}"), norm, *sums]

    workers = [
        lib.Worker(body(len(stream_runs[s][1]), s == 0), [
            x_in.cons(), w_in[s].cons(), y_out[s].prod(),
            scratch_buffer(lib, f"state{s}", (state_floats(rows),), np.dtype(np.float32)), gemv,
            *prologue_args(s),
        ], tile=core_tile(lib, c, r))
        for s, (c, r) in enumerate(cores)
    ]  # fmt: skip
    w_at = [slice_offset(launch, args, i) for i in at]
    y_at = [slice_offset(launch, args, len(launch.inputs) + j) for j in range(len(outputs))]
    pieces = [[run[i : i + SHIM_ITERATIONS] for i in range(0, len(run), SHIM_ITERATIONS)]
              for _, run in stream_runs]  # fmt: skip
    phases = max(len(p) for p in pieces)

    def per_phase(s: int, pattern) -> list[Any | None]:
        moves = [pattern(stream_runs[s][0], piece) for piece in pieces[s]]
        return moves + [None] * (phases - len(moves))

    def w_tap(part: int, piece: range) -> Any:
        shape, offset = weights[part].shape, w_at[part]
        if w.dtype != "bf16":  # the records of a run lie one after another
            offset, run = offset + piece.start * k_tiles * record, k_tiles * record
            return tap(shape, offset, [1, len(piece), k_tiles, record], [0, run, record, 1])
        return tap(shape, offset + piece.start * rows * k, [len(piece), k_tiles, rows, TK],
                   [rows * k, TK, k, 1])  # fmt: skip

    def y_tap(part: int, piece: range) -> Any:
        offset = y_at[part] + piece.start * values
        return contiguous(outputs[part].shape, offset, len(piece) * values)

    then = tuple((i, whole(args[i])) for i in range(1, vectors))
    h_at = len(launch.inputs) + len(outputs)  # the add prologue's h, the last output
    streams = [
        Stream(0, x_in.prod(tile=shim_tile(lib, 0)), once(whole(args[0]), phases), then=then),
        *(Stream(at[stream_runs[s][0]], w_in[s].prod(tile=shim_tile(lib, c)), per_phase(s, w_tap))
          for s, (c, _) in enumerate(cores)),
        *(Stream(len(launch.inputs) + stream_runs[s][0], y_out[s].cons(tile=shim_tile(lib, c)),
                 per_phase(s, y_tap), drain=True)
          for s, (c, _) in enumerate(cores)),
        *([Stream(h_at, h_out.cons(tile=shim_tile(lib, 0)), once(whole(args[h_at]), phases),
                  drain=True)] if add else []),
    ]  # fmt: skip
    return stream_program(args, streams, workers)


def params(
    m: int,
    k: int,
    n: int,
    epilogue: str | None = None,
    channels: int = 2,
    rmsnorm_eps: float | None = None,
    add_first: bool = False,
) -> dict[str, Any]:
    """A GEMV's cores: one weight stream per shim input channel but the one that
    broadcasts x, each feeding one core, as many as there are output blocks. N counts
    the rows of w (gate's and up's together for the SwiGLU epilogue). `channels`: the
    weight channels per column's shim, 2 (ours) or 1 (upstream matvec.py's layout).
    `rmsnorm_eps`: x arrives as the fp32 residual stream and every core RMS-normalizes
    it first (the prologue), which saves the array an rmsnorm launch's reconfiguration;
    `add_first`: the residual add before it too (the prologue adds o and x, and the
    first core writes their sum h), which saves an add launch's."""
    blocks = n // step_rows(epilogue)
    extra: dict[str, Any] = {} if epilogue is None else {"epilogue": epilogue}
    if rmsnorm_eps is not None:
        extra |= {"prologue": ADD_RMSNORM if add_first else RMSNORM, "eps": rmsnorm_eps}
    if channels == 1:
        return {"M": m, "K": k, "N": n, **cores(min(COLUMNS, blocks), 1), **extra}
    streams = min(2 * COLUMNS - 1, blocks)
    return {"M": m, "K": k, "N": n, **cores(streams // 2 + 1, 2), **extra}


OP = Op("gemv", design, kernel, flops)
