"""The final RMSNorm of the last hidden row (the CPU op `final_rms_norm`), with the
NPU kernel's arithmetic (aierun/ops/norm.py)."""

from __future__ import annotations

import numpy as np

from aierun.ops.norm import rmsnorm
from aierun.ops.numerics import to_bf16


def final_norm(last: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """The final RMSNorm of the last hidden row [1, E] (fp32), as the LM head's bf16 input."""
    return to_bf16(rmsnorm({"eps": eps}, last, weight)[0])
