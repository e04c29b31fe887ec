"""The bf16 rounding point shared by every emulated kernel."""

import numpy as np

from aierun.abi import BF16


def to_bf16(values: np.ndarray) -> np.ndarray:
    """fp32 -> bf16, round to nearest even (the mode our kernels set on the cores)."""
    return np.asarray(values, dtype=np.float32).astype(BF16)
