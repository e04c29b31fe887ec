"""RMSNorm (kernels_src/rmsnorm.cc): fp32 mean of squares per row, then x * rsqrt * w."""

import numpy as np


def rmsnorm(params: dict, x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray]:
    mean_square = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(mean_square + np.float32(params["eps"]))) * weight,)
