"""The prefill's K/V as the KV cache decode attention reads (the launch `kv_store`:
kernels_src/kv_store.cc, aiebuild/ops/kv_store.py).

The cache keeps each KV head's positions together, [Hkv, S, Dh], so that decode
attention reads one head's keys and values as contiguous matrices, and in fp32, the
type the host's BLAS multiplies. The projections write rows [S, Hkv*Dh] of bf16;
the NPU widens them (exactly: bf16 is fp32's upper half) and its shim DMA's pattern
puts each head's part of a row in place, so the host neither copies nor converts.
"""

from __future__ import annotations

import numpy as np


def per_head(rows: np.ndarray, kv_heads: int) -> np.ndarray:
    """[S, Hkv*Dh] -> [Hkv, S, Dh]: where the DMA's pattern writes each element."""
    seq, width = rows.shape
    return rows.reshape(seq, kv_heads, width // kv_heads).transpose(1, 0, 2)


def kv_store(params: dict, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heads = params["kv_heads"]
    return per_head(k, heads), per_head(v, heads)
