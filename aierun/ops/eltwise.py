"""Elementwise kernels (kernels_src/eltwise.cc): residual add and SwiGLU's silu(g)*u."""

import numpy as np

from aierun.ops.numerics import exp_bf16


def add(params: dict, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray]:
    return (a + b,)


def silu_mul(params: dict, gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray]:
    return (gate * (1.0 / (1.0 + exp_bf16(-gate))) * up,)  # as the kernel: g * inv(1 + e) * u
