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
    scaled = np.asarray(values, dtype=np.float32) * LOG2E
    with np.errstate(over="ignore"):  # beyond fp32's range is inf, as on the device
        exact = np.exp2(scaled.astype(np.float64)).astype(np.float32)
    return to_bf16(exact).astype(np.float32)
