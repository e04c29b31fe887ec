"""Cycles of one call of each kernel entry point on an AIE2P core, for the npu2 time
model (aiebuild/array/timing.py).

One section per kernel source, one cost function per entry-point symbol prefix, each a
function of the object's -D parameters (`AIEK_` prefix removed, e.g. {"TM": 32, ...}):
the same parameters the kernel composes its symbols from, so a design rewritten around
the same kernel keeps its costs. A cost counts the issue slots of the kernel's inner
loops from the vector operations it is written with (kernels_src/*.cc) at the rates
below; the per-call overhead (call, lock acquire/release) is timing.CALL_OVERHEAD_CYCLES.

The `upstream_*` sections model the upstream kernels whose published measurements
calibrate the rates (tools/calibrate.py); our designs do not link them.

Rates (aie2p-facts.md section 6; "⚠" = derived, not stated at the source):
"""

from __future__ import annotations

import math
from collections.abc import Callable

Defines = dict[str, int | float | str]
CostFn = Callable[[Defines], float]

# bf16 mmul without BFP16 emulation: a 4x8x8 block is 8 `mac_elem_32` (32 bf16 MACs
# each; aie_api aie2p/emulated_mmul_intrinsics.hpp `mac_4x8_8x8_bf16`), one per cycle
# at best: 8 cycles per 256 MACs (⚠ one vector MAC issue per cycle).
BF16_4X8X8_CYCLES = 8.0
# BFP16-emulated mmul (-DAIE_API_EMULATE_BFLOAT16_MMUL_WITH_BFP16): both operands go
# through `to_v64bfp16ebs8`, then one `mac_8x8_8x8T` (512 MACs; aie_api
# aie2p/mmul_bf16_bf16.hpp). Its effective cost per 8x8x8 block with the conversions,
# transposes and loads is not documented: fitted to the whole-array bf16 GEMM at
# 2048^3 (8508 GFLOP/s, Xilinx/mlir-air kernel_registry GEMM_bf16_in_fp32_out.md) by
# (15.7 ms of core time over 1024 calls of 64x32x128 per core: 6.52 cycles a block).
BFP16_8X8X8_CYCLES = 6.52
# The mmul shape gemm.cc uses in each mode (-D AIEK_MMA) and the cycles of one block:
# a true bf16 4x8x8 (256 MACs), or under BFP16 emulation the 8x8x8 (512 MACs) that is
# one `mac_8x8_8x8T` (a 4x8x8 there would grow A to 8 rows and waste half of it).
MMUL_SHAPES = {"bf16": (4, 8, 8), "bfp16": (8, 8, 8)}
MMUL_BLOCK_CYCLES = {"bf16": BF16_4X8X8_CYCLES, "bfp16": BFP16_8X8X8_CYCLES}
# An 8x8 bf16 transpose for an mmul's B operand (gemm.cc's w^T, flash_attn.cc's K^T):
# one 64-element shuffle (⚠ 1 cycle).
TRANSPOSE_8X8_CYCLES = 1.0
# fp32 vector arithmetic has no native multiplier (kernels_src/aie_kernel_common.h
# fact M); AIE-ML's documented rate is 42 fp32 ops per cycle per tile (AMD AM020,
# "FP32 float operations/tile", emulation mode); AIE2P assumed the same (⚠).
FP32_OPS_PER_CYCLE = 42.0
LANES = 16  # fp32 lanes of the vector operations our kernels use
# A 16-lane `reduce_add`: log2(16) shuffle + add steps (⚠ estimate).
REDUCE_CYCLES = 4.0
# One vector `aie::exp2` (table based, bf16 out) or `aie::inv` / `invsqrt` (⚠ estimate:
# a lookup, a few fp32 products).
TRANSCENDENTAL_CYCLES = 4.0


def fp32_ops(count: float) -> float:
    """Cycles of `count` fp32 operations (a MAC counts two) at FP32_OPS_PER_CYCLE."""
    return count / FP32_OPS_PER_CYCLE


def mma_mode(d: Defines) -> str:
    """The kernel's matmul mode: -D AIEK_MMA=bfp16 selects BFP16 emulation."""
    return "bfp16" if str(d.get("MMA", "bf16")) == "bfp16" else "bf16"


# -- kernels_src/gemm.cc --------------------------------------------------------------
def _gemm_zero(d: Defines) -> float:
    return d["TM"] * d["TN"] / LANES  # one 16-lane store per cycle


def _gemm_mac(d: Defines) -> float:
    """The mmul blocks of the kernel's mode, each with its 8x8 transpose of w
    (block_wt), plus the fp32 read-add-write of every output into acc once per call."""
    tm, tk, tn, mode = d["TM"], d["TK"], d["TN"], mma_mode(d)
    rows, depth, cols = MMUL_SHAPES[mode]
    blocks = (tm // rows) * (tk // depth) * (tn // cols)
    return blocks * (MMUL_BLOCK_CYCLES[mode] + TRANSPOSE_8X8_CYCLES) + fp32_ops(tm * tn)


def _gemm_store(d: Defines) -> float:
    return fp32_ops(d["TM"] * d["TN"])  # one conversion per element


# -- kernels_src/gemv.cc --------------------------------------------------------------
def _gemv(d: Defines) -> float:
    """Per row of the tile: TK/16 fp32 MACs and one reduce_add (the kernel's loop)."""
    rows, cols = d["TN"], d["TK"]
    return rows * (fp32_ops(2 * cols) + REDUCE_CYCLES)


# -- kernels_src/flash_attn.cc --------------------------------------------------------
# Share of a causal walk's (query block, key block) steps at or below the diagonal:
# (n + 1) / 2n for n blocks, about one half at the prefill lengths that matter.
CAUSAL_VISIBLE_FRACTION = 0.5


def _flash_init(d: Defines) -> float:
    return fp32_ops(d["BQ"] * d["DH"])


# fp32 operations per score of the online softmax: the 1/sqrt(DH) scale, the running
# max, the subtraction of the row's max, exp's product by log2 e and the row sum.
FLASH_FP32_OPS_PER_SCORE = 5


def _flash_step(d: Defines) -> float:
    """A visible key block, in strips of 4 query rows: S = Q K^T and O += P V as bf16
    4x8x8 mmul blocks (BF16_4X8X8_CYCLES each; each Q K^T block with its K transpose);
    per score the softmax's fp32 operations and a bf16 exp2 lane; per strip one
    32-lane exp of the rows' rescale factors; per row a reduce_max and a reduce_add
    (8 lanes, counted as 16) and the rescale of its acc row and sum. The design
    streams every key block for every query block and the kernel returns at once
    above the causal diagonal, so over a launch about half the calls do the work: the
    cost is that average (the diagonal block's skipped key groups are not counted)."""
    bq, bk, dh = d["BQ"], d["BK"], d["DH"]
    rows, depth, cols = MMUL_SHAPES["bf16"]  # 4 query rows x 8 keys or head dims
    score_blocks = (bq // rows) * (dh // depth) * (bk // cols)
    value_blocks = (bq // rows) * (bk // depth) * (dh // cols)
    matmuls = (score_blocks + value_blocks) * BF16_4X8X8_CYCLES
    transposes = score_blocks * TRANSPOSE_8X8_CYCLES
    exp_vectors = bq * bk / LANES + (bq // rows) * rows * cols / LANES
    softmax = (
        fp32_ops(FLASH_FP32_OPS_PER_SCORE * bq * bk)
        + exp_vectors * TRANSCENDENTAL_CYCLES
        + 2 * bq * REDUCE_CYCLES
    )
    rescale = fp32_ops(bq * (dh + 2))
    return CAUSAL_VISIBLE_FRACTION * (matmuls + transposes + softmax + rescale)


def _flash_finish(d: Defines) -> float:
    return d["BQ"] * (TRANSCENDENTAL_CYCLES + fp32_ops(2 * d["DH"]))


# -- kernels_src/rmsnorm.cc, rope.cc, eltwise.cc, kv_store.cc --------------------------
def _rmsnorm(d: Defines) -> float:
    e = d["E"]
    return fp32_ops(2 * e) + REDUCE_CYCLES + TRANSCENDENTAL_CYCLES + fp32_ops(2 * e)


def _rope(d: Defines) -> float:
    return fp32_ops(6 * d["HEADS"] * d["DH"] // 2)  # 2 products + a MAC per output pair


def _add(d: Defines) -> float:
    return fp32_ops(d["CHUNK"])


def _widen(d: Defines) -> float:
    return fp32_ops(d["CHUNK"])  # one conversion per element, as the add's one sum


def _silu_mul(d: Defines) -> float:
    chunk = d["CHUNK"]
    return fp32_ops(5 * chunk) + 2 * TRANSCENDENTAL_CYCLES * chunk / LANES


# -- upstream kernels of the calibration points (tools/calibrate.py) ----------------
def _upstream_mm_bfp16(d: Defines) -> float:
    """mlir-aie aie_kernels/aie2p/mm.cc under BFP16 emulation: 8x8x8 blocks."""
    return math.prod((d["M"] // 8, d["K"] // 8, d["N"] // 8)) * BFP16_8X8X8_CYCLES


def _upstream_mv(d: Defines) -> float:
    """mlir-air matrix_vector_multiplication mv.cc: fp32 vector MACs per row, as gemv.cc."""
    return d["M"] * (fp32_ops(2 * d["K"]) + REDUCE_CYCLES)


# The online softmax of attn_npu2.cc per score (max, exp2, sum, rescale, with its
# running statistics in bf16), fit: the 2048 causal 32/8-head point (15.4-16.1 ms,
# mlir-air FlashAttention_bf16.md) less its matmuls.
UPSTREAM_SOFTMAX_CYCLES_PER_SCORE = 11.4


def _upstream_attn_block(d: Defines) -> float:
    """mlir-air attn_npu2.cc, one (q tile, k chunk) step: Q@K^T and P@V as BFP16 8x8x8
    blocks plus the online softmax over the tile's scores (bf16 vector exp2)."""
    q, k, dk = d["Q"], d["K"], d["DK"]
    mm = 2 * (q // 8) * (k // 8) * (dk // 8) * BFP16_8X8X8_CYCLES
    return mm + q * k * UPSTREAM_SOFTMAX_CYCLES_PER_SCORE


COSTS: dict[str, dict[str, CostFn]] = {
    "gemm": {
        "gemm_zero_f32_": _gemm_zero,
        "gemm_mac_bf16_": _gemm_mac,
        "gemm_store_bf16_": _gemm_store,
    },
    "gemv": {"gemv_bf16_": _gemv},
    "flash_attn": {
        "flash_attn_init_": _flash_init,
        "flash_attn_step_": _flash_step,
        "flash_attn_finish_": _flash_finish,
    },
    "rmsnorm": {"rmsnorm_": _rmsnorm},
    "rope": {"rope_": _rope},
    "eltwise": {"add_": _add, "silu_mul_": _silu_mul},
    "kv_store": {"widen_": _widen},
    "upstream_mm": {"matmul_bfp16_": _upstream_mm_bfp16},
    "upstream_mv": {"matvec_bf16_": _upstream_mv},
    "upstream_attn": {"attn_block_bfp16_": _upstream_attn_block},
}


def call_cycles(source: str, symbol: str, defines: Defines) -> float:
    """Cycles of one call of `symbol` from the kernel `source` (its file stem)."""
    entries = COSTS.get(source)
    if entries is None:
        raise KeyError(f"no kernel costs for {source!r}: add them to its op module")
    for prefix in sorted(entries, key=len, reverse=True):
        if symbol.startswith(prefix):
            return float(entries[prefix](defines))
    raise KeyError(f"no cost for entry point {symbol!r} of {source!r} in kernel_costs.py")
