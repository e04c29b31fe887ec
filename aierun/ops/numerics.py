"""The AIE2P arithmetic the emulated kernels share: the bf16 rounding point and the
bf16-precise exp."""

import numpy as np

from aierun.abi import BF16

# log2(e) in fp32, the constant the kernels multiply by before exp2 (aie_kernel_common.h).
LOG2E = np.float32(1.4426950408889634)


def to_bf16(values: np.ndarray) -> np.ndarray:
    """fp32 -> bf16, round to nearest even (the mode our kernels set on the cores)."""
    return np.asarray(values, dtype=np.float32).astype(BF16)


def exp_bf16(values: np.ndarray) -> np.ndarray:
    """e^x as the kernels compute it (kernels_src/aie_kernel_common.h exp_bf16), in fp32:
    2^(x * LOG2E) with an fp32 product, through aie::exp2, whose result on AIE2P is
    bf16 (aie_api requires a bfloat16 result on XDNA 2). 2^y is taken exactly (in fp64,
    as the host model of aie_api does) and then rounded to fp32 and to bf16: the
    device's exp2 table is only documented as bf16 out."""
    return exp2_bf16(np.asarray(values, dtype=np.float32) * LOG2E)


def exp2_bf16(values: np.ndarray) -> np.ndarray:
    """2^x as aie::exp2 on AIE2P computes it, in fp32: taken exactly, rounded to bf16."""
    with np.errstate(over="ignore"):  # beyond fp32's range is inf, as on the device
        exact = np.exp2(np.asarray(values, dtype=np.float64)).astype(np.float32)
    return to_bf16(exact).astype(np.float32)


BFP16_BLOCK = 8  # values sharing one exponent (bfp16ebs8)
# A bfp16 value is m * 2^(E - BFP16_SHIFT): E the block's largest biased fp32 exponent
# field, m an int8, so the largest magnitude keeps its leading bit and 6 fraction bits.
BFP16_SHIFT = 133
_FP32_TINY = np.finfo(np.float32).tiny
CONVERT_ELEMENTS = 65536  # elements to_bfp16 converts at a time


class Bfp16Operand(np.ndarray):
    """An array that already holds bfp16 values (what `to_bfp16` returns):
    `to_bfp16` passes it through, so the emulator can convert a weight once."""


def to_bfp16(values: np.ndarray) -> np.ndarray:
    """The bf16 operands of a BFP16-emulated matmul as the mmul sees them, in fp32:
    every run of 8 along the last axis (the k of a GEMM's rows of x and of w) becomes
    one bfp16ebs8 block, each value rounded to nearest even (the mode gemm.cc sets) at
    the block's scale. The model of kernels_src/host/aie_api/detail/bfp16.hpp, with its
    assumptions: a value rounding up to m = 128 saturates to 127, subnormals count as
    zero, a block holding an infinity or NaN becomes NaN."""
    if isinstance(values, Bfp16Operand):
        return values
    x = np.asarray(values, dtype=np.float32)
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty(rows.shape, np.float32)
    # A few thousand rows' worth at a time: the fp64 temporaries stay in the CPU's
    # cache (6x faster than the whole tensor at once for an 8192 x 2048 weight).
    step = max(1, CONVERT_ELEMENTS // x.shape[-1])
    for start in range(0, len(rows), step):
        out[start : start + step] = _bfp16_rows(rows[start : start + step])
    return out.reshape(x.shape).view(Bfp16Operand)


def _bfp16_rows(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(*x.shape[:-1], -1, BFP16_BLOCK)
    blocks = np.where(np.abs(blocks) < _FP32_TINY, np.float32(0), blocks)
    shared = ((blocks.view(np.uint32) >> 23) & 0xFF).max(axis=-1, keepdims=True).astype(np.int64)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite blocks: NaN below
        # The mantissas in fp64, scaled by powers of two made from their bits (exact);
        # + 0 makes a -0 the +0 of an int8.
        mantissa = np.rint(blocks * _power_of_two(BFP16_SHIFT - shared))
        mantissa = np.clip(mantissa, -128, 127, out=mantissa) + 0
        quantized = (mantissa * _power_of_two(shared - BFP16_SHIFT)).astype(np.float32)
    finite = np.isfinite(blocks).all(axis=-1, keepdims=True)
    return np.where(finite, quantized, np.float32(np.nan)).reshape(x.shape)


def _power_of_two(exponent: np.ndarray) -> np.ndarray:
    """2^exponent as fp64, from its exponent field (normal range only)."""
    return ((exponent + 1023) << 52).view(np.float64)
