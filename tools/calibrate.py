"""The npu2 time model against published NPU2 measurements (docs/hardware.md section 8).

Each published point is modeled twice:
- `reference`: a program shaped like the upstream design that was measured (its core
  grid, memory-tile broadcasts and joins, shim columns), recorded with the IRON model
  and timed by aiebuild/array/timing.py with the upstream kernel's cost
  (`UPSTREAM_COSTS` below). This checks the model's rates; points marked "fit" are the ones the
  rates were solved from (timing.py says which), the others test them.
- `ours`: the same shape built with our design (aiebuild/ops) through a one-launch
  ELF spec, as the project would run it.

`doit calibrate` (`python -m tools.calibrate`) prints the table (docs/benchmarks.md keeps a copy)
and, with `--llama`, the modeled Llama-3.2-1B ELFs at seq_len 2048 beside the seed's
measured times.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from aiebuild import placed
from aiebuild.array import iron_record, timing
from aiebuild.array.core_rates import BFP16_8X8X8_CYCLES, REDUCE_CYCLES, CostFn, Params, fp32_ops
from aiebuild.array.geometry import COLUMNS, CORE_ROWS
from aiebuild.ops import eltwise, flash_attn, gemm, gemv
from aiebuild.ops.common import tensor
from aierun.abi import BF16, ArgSpec, ElfSpec, Launch, Role
from aierun.profiling.seed import seed_profile

F32 = np.dtype(np.float32)
AIR = "Xilinx/mlir-air programming_examples/kernel_registry/details/"


@dataclass(frozen=True)
class Point:
    """One published measurement and how to model it."""

    name: str
    measured_s: float
    source: str
    reference: Callable[[], timing.ElfTime]
    ours: Callable[[], timing.ElfTime] | None
    fit: bool = False  # one of the points the rates were solved from


# -- the upstream kernels of the points, as costs of their entry points -----------------
def _upstream_mm_bfp16(d: Params) -> float:
    """mlir-aie aie_kernels/aie2p/mm.cc under BFP16 emulation: 8x8x8 blocks."""
    return math.prod((d["M"] // 8, d["K"] // 8, d["N"] // 8)) * BFP16_8X8X8_CYCLES


def _upstream_mv(d: Params) -> float:
    """mlir-air matrix_vector_multiplication mv.cc: fp32 vector MACs per row, as gemv.cc."""
    return d["M"] * (fp32_ops(2 * d["K"]) + REDUCE_CYCLES)


# The online softmax of attn_npu2.cc per score (max, exp2, sum, rescale, with its
# running statistics in bf16), fit: the 2048 causal 32/8-head point (15.4-16.1 ms,
# mlir-air FlashAttention_bf16.md) less its matmuls.
UPSTREAM_SOFTMAX_CYCLES_PER_SCORE = 11.4


def _upstream_attn_block(d: Params) -> float:
    """mlir-air attn_npu2.cc, one (q tile, k chunk) step: Q@K^T and P@V as BFP16 8x8x8
    blocks plus the online softmax over the tile's scores (bf16 vector exp2)."""
    q, k, dk = d["Q"], d["K"], d["DK"]
    mm = 2 * (q // 8) * (k // 8) * (dk // 8) * BFP16_8X8X8_CYCLES
    return mm + q * k * UPSTREAM_SOFTMAX_CYCLES_PER_SCORE


# Each recorded reference links one object named after its kernel; its entry points'
# costs, from the object's parameters.
UPSTREAM_COSTS: dict[str, dict[str, CostFn]] = {
    "upstream_mm.o": {"matmul_bfp16_": _upstream_mm_bfp16},
    "upstream_mv.o": {"matvec_bf16_": _upstream_mv},
    "upstream_attn.o": {"attn_block_bfp16_": _upstream_attn_block},
    "eltwise.o": dict(eltwise.ADD.costs),  # the add's cost is ours: DMA-bound either way
}


def _timed(name: str, build: Callable[[Any], Any], params: dict[str, Params]) -> timing.ElfTime:
    """The reference program `build` records, each object priced by UPSTREAM_COSTS."""
    with iron_record.recording() as lib:
        program = build(lib)

    def call_cycles(object_name: str, symbol: str) -> float:
        costs = UPSTREAM_COSTS[object_name]
        prefix = next(p for p in sorted(costs, key=len, reverse=True) if symbol.startswith(p))
        return costs[prefix](params[object_name])

    return timing.ElfTime(name, [timing.launch_time(program, call_cycles, name)])


def _host(dims: tuple[int, ...], dtype: np.dtype) -> type:
    return tensor(dims, dtype)


def _tap(lib, dims: tuple[int, ...], elements: int) -> Any:
    """A transfer of `elements` of a host buffer (the model needs only its size)."""
    return lib.TensorAccessPattern(dims, 0, [1, 1, 1, elements], [0, 0, 0, 1])


# -- whole-array GEMM (mlir-air matrix_multiplication/bf16_in_fp32_out, herd 8x4) ----------
def gemm_reference(m: int, k: int, n: int, tm: int = 64, tk: int = 32, tn: int = 128):
    """Column c computes row blocks of C (A broadcast down the column from memory tile
    c), row r column blocks (B broadcast along the row from memory tile 2r, which joins
    its two halves from shims 2r and 2r+1); each column's four C tiles join in its
    memory tile and drain through its shim."""
    m_iters, n_iters, k_steps = m // (tm * COLUMNS), n // (tn * CORE_ROWS), k // tk
    a_ty, b_ty, c_ty = tensor((tm, tk), BF16), tensor((tk, tn), BF16), tensor((tm, tn), F32)
    obj = "upstream_mm.o"

    def build(lib):
        mm = lib.Kernel(f"matmul_bfp16_{tm}x{tk}x{tn}", obj, [a_ty, b_ty, c_ty])
        a_fifos = [lib.ObjectFifo(a_ty, name=f"a{c}") for c in range(COLUMNS)]
        a_cols = [f.cons().forward(tile=lib.Tile(c, 1)) for c, f in enumerate(a_fifos)]
        b_fifos = [lib.ObjectFifo(b_ty, name=f"b{r}") for r in range(CORE_ROWS)]
        half = tensor((tk // 2, tn), BF16)
        b_halves = [
            f.prod().join([0, tk // 2 * tn], tile=lib.Tile(2 * r, 1), obj_types=[half] * 2)
            for r, f in enumerate(b_fifos)
        ]
        c_fifos = [lib.ObjectFifo(tensor((CORE_ROWS * tm, tn), F32)) for _ in range(COLUMNS)]
        c_parts = [
            f.prod().join([r * tm * tn for r in range(CORE_ROWS)], tile=lib.Tile(c, 1),
                          obj_types=[c_ty] * CORE_ROWS)
            for c, f in enumerate(c_fifos)
        ]  # fmt: skip

        def core(a, b, out, kernel):
            for _ in lib.range_(m_iters * n_iters):
                acc = out.acquire(1)
                for _ in lib.range_(k_steps):
                    kernel(a.acquire(1), b.acquire(1), acc)
                    a.release(1)
                    b.release(1)
                out.release(1)

        workers = [
            lib.Worker(core, [a_cols[c].cons(), b_fifos[r].cons(), c_parts[c][r].prod(), mm],
                       tile=lib.Tile(c, 2 + r))
            for c in range(COLUMNS) for r in range(CORE_ROWS)
        ]  # fmt: skip
        b_handles = [h.prod(tile=lib.Tile(2 * r + j, 0))
                     for r, pair in enumerate(b_halves) for j, h in enumerate(pair)]  # fmt: skip
        a_handles = [f.prod(tile=lib.Tile(c, 0)) for c, f in enumerate(a_fifos)]
        c_handles = [f.cons(tile=lib.Tile(c, 0)) for c, f in enumerate(c_fifos)]

        def sequence(a, b, c, *handles):
            for handle in handles[:COLUMNS]:  # each column's A rows, once per n block
                handle.fill(a, _tap(lib, (m, k), m * k // COLUMNS * n_iters))
            for handle in handles[COLUMNS : COLUMNS + 2 * CORE_ROWS]:  # B halves per m block
                handle.fill(b, _tap(lib, (k, n), k * n // (2 * CORE_ROWS) * m_iters))
            for handle in handles[COLUMNS + 2 * CORE_ROWS :]:
                handle.drain(c, _tap(lib, (m, n), m * n // COLUMNS), wait=True)

        hosts = [_host((m, k), BF16), _host((k, n), BF16), _host((m, n), F32)]
        runtime = lib.Runtime(sequence, [*hosts, *a_handles, *b_handles, *c_handles])
        return lib.Program(lib.NPU2(), runtime, workers)

    params = {obj: {"M": tm, "K": tk, "N": tn}}
    return lambda: _timed(f"gemm {m}x{k}x{n}", build, params)


# -- GEMV over 8 columns (mlir-air matrix_vector_multiplication/bf16, herd_m 8) -----------
def gemv_reference(m: int, k: int, tile_m: int = 8):
    """One core per column; its rows of A stream from its shim through its memory tile,
    x comes once from the same shim, its y rows drain there."""
    calls = m // (COLUMNS * tile_m)
    a_ty, x_ty, y_ty = tensor((tile_m, k), BF16), tensor((k,), BF16), tensor((tile_m,), BF16)
    obj = "upstream_mv.o"

    def build(lib):
        mv = lib.Kernel(f"matvec_bf16_{tile_m}x{k}", obj, [a_ty, x_ty, y_ty])
        a_fifos = [lib.ObjectFifo(a_ty) for _ in range(COLUMNS)]
        a_cols = [f.cons().forward(tile=lib.Tile(c, 1)) for c, f in enumerate(a_fifos)]
        x_fifos = [lib.ObjectFifo(x_ty, depth=1) for _ in range(COLUMNS)]
        y_fifos = [lib.ObjectFifo(y_ty) for _ in range(COLUMNS)]

        def core(a, x, y, kernel):
            vector = x.acquire(1)
            for _ in lib.range_(calls):
                kernel(a.acquire(1), vector, y.acquire(1))
                a.release(1)
                y.release(1)
            x.release(1)

        workers = [
            lib.Worker(core, [a_cols[c].cons(), x_fifos[c].cons(), y_fifos[c].prod(), mv],
                       tile=lib.Tile(c, 2))
            for c in range(COLUMNS)
        ]  # fmt: skip
        ends = [
            *(f.prod(tile=lib.Tile(c, 0)) for c, f in enumerate(a_fifos)),
            *(f.prod(tile=lib.Tile(c, 0)) for c, f in enumerate(x_fifos)),
            *(f.cons(tile=lib.Tile(c, 0)) for c, f in enumerate(y_fifos)),
        ]

        def sequence(a, x, y, *handles):
            for handle in handles[:COLUMNS]:
                handle.fill(a, _tap(lib, (m, k), m * k // COLUMNS))
            for handle in handles[COLUMNS : 2 * COLUMNS]:
                handle.fill(x)
            for handle in handles[2 * COLUMNS :]:
                handle.drain(y, _tap(lib, (m,), m // COLUMNS), wait=True)

        hosts = [_host((m, k), BF16), _host((k,), BF16), _host((m,), BF16)]
        return lib.Program(lib.NPU2(), lib.Runtime(sequence, [*hosts, *ends]), workers)

    params = {obj: {"M": tile_m, "K": k}}
    return lambda: _timed(f"gemv {m}x{k}", build, params)


# -- eltwise add (mlir-air eltwise_add, herd_x columns, tile_n 2048) ------------------------
def add_reference(total: int, columns: int, chunk: int = 2048):
    """One core per column; a and b stream in on its shim's two channels, c out."""
    ty = tensor((chunk,), BF16)
    obj = "eltwise.o"

    def build(lib):
        add = lib.Kernel(f"add_bf16_bf16_bf16_{chunk}", obj, [ty, ty, ty])
        fifos = [[lib.ObjectFifo(ty) for _ in range(3)] for _ in range(columns)]
        steps = total // (columns * chunk)

        def core(a, b, c, kernel):
            for _ in lib.range_(steps):
                kernel(a.acquire(1), b.acquire(1), c.acquire(1))
                for handle in (a, b, c):
                    handle.release(1)

        workers = [
            lib.Worker(core, [a.cons(), b.cons(), c.prod(), add], tile=lib.Tile(col, 2))
            for col, (a, b, c) in enumerate(fifos)
        ]
        ends = [
            (a.prod(tile=lib.Tile(col, 0)), b.prod(tile=lib.Tile(col, 0)),
             c.cons(tile=lib.Tile(col, 0)))
            for col, (a, b, c) in enumerate(fifos)
        ]  # fmt: skip

        def sequence(a, b, c, *handles):
            share = total // columns
            for fill_a, fill_b, drain_c in zip(*[iter(handles)] * 3, strict=True):
                fill_a.fill(a, _tap(lib, (total,), share))
                fill_b.fill(b, _tap(lib, (total,), share))
                drain_c.drain(c, _tap(lib, (total,), share), wait=True)

        hosts = [_host((total,), BF16)] * 3
        flat = [h for trio in ends for h in trio]
        return lib.Program(lib.NPU2(), lib.Runtime(sequence, [*hosts, *flat]), workers)

    params = {obj: {"CHUNK": chunk}}
    return lambda: _timed(f"add {total} on {columns} columns", build, params)


# -- flash attention (mlir-air flash_attention/kernel_fusion_based, 32 tiles) ----------------
def attention_reference(seq: int, heads: int, kv_heads: int, dk: int = 64, tile: int = 64):
    """32 cores share the (query tile, key chunk) steps of a causal walk equally; each
    core's queries come from its column's shim, and each column's four cores share one
    K|V stream through its memory tile."""
    q_tiles = heads * seq // tile
    steps = heads * sum(range(1, seq // tile + 1))  # causal: query tile i sees i+1 chunks
    cores = COLUMNS * CORE_ROWS
    q_per_core, steps_per_core = math.ceil(q_tiles / cores), math.ceil(steps / cores)
    q_ty, kv_ty = tensor((tile, dk), BF16), tensor((2 * tile, dk), BF16)
    obj = "upstream_attn.o"

    def build(lib):
        attn = lib.Kernel(f"attn_block_bfp16_{tile}x{tile}x{dk}", obj, [q_ty, kv_ty, q_ty])
        kv_fifos = [lib.ObjectFifo(kv_ty) for _ in range(COLUMNS)]
        kv_cols = [f.cons().forward(tile=lib.Tile(c, 1)) for c, f in enumerate(kv_fifos)]
        q_fifos = [lib.ObjectFifo(q_ty) for _ in range(cores)]
        o_fifos = [lib.ObjectFifo(q_ty) for _ in range(cores)]

        def core(q, kv, o, kernel):
            for _ in lib.range_(q_per_core):  # the query tile and its output...
                queries, out = q.acquire(1), o.acquire(1)
                q.release(1)
                o.release(1)
            for _ in lib.range_(steps_per_core):  # ...and the steps over key chunks
                kernel(queries, kv.acquire(1), out)
                kv.release(1)

        workers = [
            lib.Worker(core, [q_fifos[i].cons(), kv_cols[i // CORE_ROWS].cons(),
                              o_fifos[i].prod(), attn],
                       tile=lib.Tile(i // CORE_ROWS, 2 + i % CORE_ROWS))
            for i in range(cores)
        ]  # fmt: skip
        ends = [
            *(f.prod(tile=lib.Tile(c, 0)) for c, f in enumerate(kv_fifos)),
            *(f.prod(tile=lib.Tile(i // CORE_ROWS, 0)) for i, f in enumerate(q_fifos)),
            *(f.cons(tile=lib.Tile(i // CORE_ROWS, 0)) for i, f in enumerate(o_fifos)),
        ]
        q_dims, kv_dims = (seq, heads * dk), (seq, 2 * kv_heads * dk)
        kv_bytes = steps_per_core * 2 * tile * dk

        def sequence(q, kv, o, *handles):
            for handle in handles[:COLUMNS]:
                handle.fill(kv, _tap(lib, kv_dims, kv_bytes))
            for handle in handles[COLUMNS : COLUMNS + cores]:
                handle.fill(q, _tap(lib, q_dims, q_per_core * tile * dk))
            for handle in handles[COLUMNS + cores :]:
                handle.drain(o, _tap(lib, q_dims, q_per_core * tile * dk), wait=True)

        hosts = [_host((seq, heads * dk), BF16), _host((seq, 2 * kv_heads * dk), BF16),
                 _host((seq, heads * dk), BF16)]  # fmt: skip
        return lib.Program(lib.NPU2(), lib.Runtime(sequence, [*hosts, *ends]), workers)

    params = {obj: {"Q": tile, "K": tile, "DK": dk}}
    return lambda: _timed(f"attention {seq} {heads}/{kv_heads}", build, params)


# -- the same shapes through our designs ---------------------------------------------------
def _one_launch(name: str, args: list[ArgSpec], launch: Launch) -> Callable[[], timing.ElfTime]:
    spec = ElfSpec(name, "prefill", 0, tuple(args), (launch,))
    return lambda: placed.elf_time(spec)


def gemm_ours(m: int, k: int, n: int):
    args = [ArgSpec("x", (m, k), "bf16", Role.INPUT), ArgSpec("w", (n, k), "bf16", Role.WEIGHT),
            ArgSpec("y", (m, n), "bf16", Role.OUTPUT)]  # fmt: skip
    params = gemm.params(m, k, n, "bfp16")
    return _one_launch(f"gemm {m}x{k}x{n}", args, Launch("gemm", params, ("x", "w"), ("y",)))


def gemv_ours(m: int, k: int):
    args = [ArgSpec("x", (1, k), "bf16", Role.INPUT), ArgSpec("w", (m, k), "bf16", Role.WEIGHT),
            ArgSpec("y", (1, m), "bf16", Role.OUTPUT)]  # fmt: skip
    launch = Launch("gemv", gemv.params(1, k, m), ("x", "w"), ("y",), "gemv")
    return _one_launch(f"gemv {m}x{k}", args, launch)


def add_ours(total: int):
    rows = total // 2048
    args = [ArgSpec(n, (rows, 2048), "bf16", r)
            for n, r in (("a", Role.INPUT), ("b", Role.INPUT), ("c", Role.OUTPUT))]  # fmt: skip
    launch = Launch("add", eltwise.params(rows, 2048), ("a", "b"), ("c",), "add")
    return _one_launch(f"add {total}", args, launch)


def attention_ours(seq: int, heads: int, kv_heads: int, dk: int = 64):
    q, kv = heads * dk, kv_heads * dk
    args = [ArgSpec("q", (seq, q), "bf16", Role.INPUT), ArgSpec("k", (seq, kv), "bf16", Role.INPUT),
            ArgSpec("v", (seq, kv), "bf16", Role.INPUT),
            ArgSpec("o", (seq, q), "bf16", Role.OUTPUT)]  # fmt: skip
    params = flash_attn.params(heads, kv_heads, dk, seq)
    return _one_launch("attention", args, Launch("flash_attn", params, ("q", "k", "v"), ("o",)))


def _gflops(flops: float, rate: float) -> float:
    return flops / (rate * 1e9)


def points() -> list[Point]:
    """The published NPU2 points (docs/hardware.md section 8, at their sources)."""
    gemm_src, gemv_src = AIR + "GEMM_bf16_in_fp32_out.md", AIR + "GEMV_bf16.md"
    add_src, fa_src = AIR + "EltwiseAdd_bf16.md", AIR + "FlashAttention_bf16.md"
    out = []
    for (m, k, n), rate, fit in (
        ((2048, 2048, 2048), 8508, True), ((4096, 4096, 4096), 9329, False),
        ((2048, 8192, 2048), 9797, False), ((2048, 2048, 8192), 8278, False),
        ((2048, 2048, 512), 7342, False), ((512, 512, 512), 1791, False),
    ):  # fmt: skip
        tm = 32 if m == 512 else 64
        name, seconds = f"bf16 GEMM {m}x{k}x{n} ({rate} GFLOP/s)", _gflops(2 * m * k * n, rate)
        out.append(Point(name, seconds, gemm_src, gemm_reference(m, k, n, tm),
                         gemm_ours(m, k, n), fit))  # fmt: skip
    for (m, k), us, fit in (
        ((2048, 2048), 330, True), ((16384, 2048), 2193, True), ((8192, 2048), 1067, False),
        ((49152, 2048), 6187, False), ((512, 2048), 136, False),
    ):  # fmt: skip
        out.append(Point(f"bf16 GEMV {m}x{k}", us * 1e-6, gemv_src, gemv_reference(m, k),
                         gemv_ours(m, k), fit))  # fmt: skip
    for total, columns, us, fit in (
        (4194304, 1, 2759, True), (4194304, 8, 437, True), (8388608, 8, 798, True),
        (2097152, 8, 277, False), (1048576, 8, 175, False),
    ):  # fmt: skip
        ours = add_ours(total) if columns == 8 else None
        out.append(Point(f"bf16 add N={total}, {columns} column(s)", us * 1e-6, add_src,
                         add_reference(total, columns), ours, fit))  # fmt: skip
    for seq, heads, kv, ms, fit in (
        (2048, 32, 8, 15.75, True), (2048, 32, 32, 16.9, False), (16384, 2, 2, 39.6, False),
    ):  # fmt: skip
        out.append(Point(f"causal attention {seq}, {heads}/{kv} heads, dk 64", ms * 1e-3,
                         fa_src, attention_reference(seq, heads, kv),
                         attention_ours(seq, heads, kv), fit))  # fmt: skip
    return out


# -- the tables ------------------------------------------------------------------------------
def calibration_rows() -> list[tuple[str, ...]]:
    """Model vs measured per published point, with the error of each."""
    rows = []
    for point in points():
        reference = point.reference()
        ours = point.ours() if point.ours else None
        error = 100 * (reference.seconds / point.measured_s - 1)
        rows.append((
            point.name, f"{1e3 * point.measured_s:.3f}", f"{reference.ms:.3f}",
            f"{error:+.1f}%" + (" (fit)" if point.fit else ""),
            reference.launches[0].bound, f"{ours.ms:.2f}" if ours else "—",
        ))  # fmt: skip
    return rows


# The seed's measured Llama-3.2-1B times on Strix (ms), from the file the runtime's
# report reads too (aierun/data/seed_profile.json).
SEED = seed_profile()


def with_mma(spec: ElfSpec, mma: str | None) -> ElfSpec:
    """The spec with its GEMM launches' matmul mode set to `mma` (None: as specified)."""
    if mma is None:
        return spec
    launches = tuple(
        replace(launch, params={**launch.params, "mma": mma}) if launch.op == "gemm" else launch
        for launch in spec.launches
    )
    return replace(spec, launches=launches)


def llama_rows(
    seq_len: int = 2048, mma: str | None = None
) -> tuple[list[tuple[str, ...]], dict[str, float]]:
    """Per ELF of Llama-3.2-1B at `seq_len`: modeled, the seed's measured, the floor
    (aierun/profiling/roofline.py) and what bounds the slowest launch; and the per-phase sums.
    `mma` overrides the GEMMs' matmul mode (bf16 or bfp16) to compare the two."""
    from aiebuild.specs import model_specs
    from aierun.model import ModelShape
    from aierun.profiling.roofline import NPU2_RATES, elf_cost
    from tools.random_llama import LLAMA_3_2_1B

    shape = ModelShape.from_config(LLAMA_3_2_1B)
    rows, modeled = [], {}
    for spec in model_specs(shape, [seq_len]):
        spec = with_mma(spec, mma)
        elf = placed.elf_time(spec)
        modeled[spec.name] = elf.ms
        slowest = max(elf.launches, key=lambda launch: launch.seconds)
        floor_ms = 1e3 * NPU2_RATES.floor_s(elf_cost(spec))
        rows.append((
            spec.instance, f"{elf.ms:.2f}", f"{SEED.elf_ms[spec.name]:.1f}", f"{floor_ms:.2f}",
            f"{elf.ms / floor_ms:.1f}x", f"{slowest.label}: {slowest.bound}",
        ))  # fmt: skip
    layers = shape.n_layers
    phases = {
        "prefill": layers * sum(modeled[n] for n in ("rms_gemms_rope", "flash_attn", "o_ffn"))
        + modeled["lm_head_gemv"],
        "decode": layers * (modeled["rms_gemv_rope"] + modeled["o_gemv_ffn"])
        + modeled["lm_head_gemv"],
    }
    return rows, phases


def markdown(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama", action="store_true", help="also model Llama-3.2-1B")
    parser.add_argument("--mma", choices=("bf16", "bfp16"), help="the GEMMs' matmul mode")
    args = parser.parse_args(argv)
    columns = ("point", "measured ms", "model ms", "error", "bound", "ours ms")
    print(markdown(columns, calibration_rows()))
    if args.llama:
        rows, phases = llama_rows(mma=args.mma)
        columns = ("ELF", "modeled ms", "seed ms", "floor ms", "modeled / floor", "bound")
        print()
        print(markdown(columns, rows))
        print()
        print(f"prefill kernel time: {phases['prefill']:.1f} ms modeled "
              f"(seed {SEED.prefill_kernel_ms:.0f} ms); decode token: {phases['decode']:.2f} ms "
              f"modeled (seed {SEED.decode_kernel_ms_per_token:.0f} ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
