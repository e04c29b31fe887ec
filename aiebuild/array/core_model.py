"""The rates of the AIE2P core's operations that the kernels' cost functions count with
(each op's costs live in its module, aiebuild/ops/<op>.py; the per-call overhead, call
and lock acquire/release, is timing.CALL_OVERHEAD_CYCLES).

A cost function takes the kernel object's typed -D parameters (e.g. {"TM": 32, ...}):
the same parameters the kernel composes its entry-point symbols from, so a design
rewritten around the same kernel keeps its costs.

Rates (docs/hardware.md section 6; "⚠" = derived, not stated at the source):
"""

from __future__ import annotations

from collections.abc import Callable

Params = dict[str, int | float | bool | str]  # a kernel object's -D parameters
CostFn = Callable[[Params], float]  # cycles of one call of an entry point

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


def mma_mode(d: Params) -> str:
    """The kernel's matmul mode: -D AIEK_MMA=bfp16 selects BFP16 emulation."""
    return "bfp16" if str(d.get("MMA", "bf16")) == "bfp16" else "bf16"
