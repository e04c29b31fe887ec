"""RMSNorm (kernels_src/rmsnorm.cc): fp32 mean of squares per row, then x * rsqrt * w."""

import numpy as np


def rmsnorm(params: dict, x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray]:
    # Rows of E (a launch's; the last axis without one): a launch may normalize each head
    # of a [rows, H * Dh] tensor (Qwen3's q/k norm, E = Dh), rows * H rows of Dh.
    rows = x.reshape(-1, params.get("E", x.shape[-1]))
    mean_square = np.mean(np.square(rows), axis=-1, keepdims=True)
    normed = rows * (1.0 / np.sqrt(mean_square + np.float32(params["eps"]))) * weight
    return (normed.reshape(x.shape),)
