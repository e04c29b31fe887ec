"""The BFP16 emulation of the GEMM's operands (aierun.ops.numerics.to_bfp16) against
the format's definition, worked out independently here: per block of 8 along the last
axis, one step 2^(E - 133) for the block's largest exponent E, values rounded to it.
(Bit-exactness against the kernel: tests/sim/test_host_kernels.py.)"""

from __future__ import annotations

import numpy as np

from aierun.ops import OPS
from aierun.ops.numerics import to_bf16, to_bfp16

RNG = np.random.default_rng(3)


def test_a_block_of_one_exponent_keeps_seven_significant_bits():
    """All values in [1, 2): step 2^-6, ties to even (1 + 1/128 -> 1, 1 + 3/128 ->
    1 + 1/32), and the largest, 1.9921875, saturates at 127/64."""
    block = np.array([1.0, 1 + 2**-7, 1 + 3 * 2**-7, 1.5, -1.25, -(1 + 2**-7), 1.9921875, 1.0])
    expected = [1.0, 1.0, 1 + 2**-5, 1.5, -1.25, -1.0, 127 / 64, 1.0]
    np.testing.assert_array_equal(to_bfp16(block.astype(np.float32)), expected)


def test_small_values_share_the_largest_exponent():
    """Beside 8.0 (step 2^-3), 0.3 becomes 0.25, 0.01 vanishes, -1/16 is a tie that goes
    to the even 0; the next block keeps its own scale (0.3: step 2^-8)."""
    x = np.array([[8.0, 0.3, 0.01, -1 / 16, 0, 0, 0, 0], [0.3, 0.01, 0, 0, 0, 0, 0, 0]])
    q = to_bfp16(x.astype(np.float32))
    np.testing.assert_array_equal(q[0, :4], [8.0, 0.25, 0.0, 0.0])
    np.testing.assert_array_equal(q[1, :2], [77 / 256, 3 / 256])


def test_error_is_at_most_half_a_step_of_the_block():
    x = to_bf16(RNG.standard_normal((64, 256)).astype(np.float32) * 3).astype(np.float32)
    blocks = x.reshape(64, -1, 8)
    _, exponent = np.frexp(np.abs(blocks).max(axis=-1, keepdims=True))  # max = f * 2^e
    half_step = np.ldexp(1.0, exponent - 8)  # the step is 2^(e - 7)
    saturated = blocks >= np.ldexp(127.5, exponent - 7)
    error = np.abs(to_bfp16(x).reshape(blocks.shape) - blocks)
    assert (error <= np.where(saturated, 2 * half_step, half_step)).all()


def test_special_blocks():
    """Subnormals count as zero; an infinity or NaN makes its whole block NaN and no
    other."""
    x = np.zeros((3, 8), np.float32)
    x[0, :3] = [1e-39, -2e-39, 3e-39]
    x[1] = 1.0
    x[1, 5] = np.inf
    x[2] = 0.5
    q = to_bfp16(x)
    np.testing.assert_array_equal(q[0], 0.0)
    assert np.isnan(q[1]).all() and (q[2] == 0.5).all()


def test_gemm_mode_follows_the_launch():
    """`mma: bfp16` multiplies the converted operands; without it, the bf16 values."""
    x, w = RNG.standard_normal((4, 64)), RNG.standard_normal((16, 64))
    x, w = to_bf16(x.astype(np.float32)).astype(np.float32), to_bf16(w).astype(np.float32)
    (plain,) = OPS["gemm"]({}, x, w)
    (blocked,) = OPS["gemm"]({"mma": "bfp16"}, x, w)
    np.testing.assert_allclose(plain, x @ w.T, rtol=1e-6)
    np.testing.assert_allclose(blocked, to_bfp16(x) @ to_bfp16(w).T, rtol=1e-6)
    assert not np.array_equal(plain, blocked)
