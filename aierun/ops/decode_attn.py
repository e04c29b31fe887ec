"""One decode step's grouped-query attention over the device-resident KV cache (the
launch `decode_attn`: kernels_src/decode_attn.cc, aiebuild/ops/decode_attn.py).

Its operands are what the host leaves for it each step: `query` [Hkv, G*Dh + PAD] fp32,
per KV head its group's query rows widened from bf16, then the number of positions to
attend as a float in the row's first pad word (the kernel reads it there: the length
changes per call, the design's loops do not); `kv_cache` [Hkv, 2, C, Dh] fp32, per KV
head its keys then its values, positions [0, length) valid. The output is bf16 [1, H*Dh].

As flash_attn's emulation (aierun/ops/attention.py), the softmax is taken over whole
rows with the kernel's bf16-precise exp: it differs from the kernel by the online
rescaling per key block and the summation order.
"""

from __future__ import annotations

import numpy as np

from aierun.ops.numerics import exp_bf16

PAD = 16  # words after each group's queries: the length, then zeros (64-byte rows)


def query_rows(q: np.ndarray, kv_heads: int, length: int, out: np.ndarray) -> np.ndarray:
    """Write the `query` operand into `out` [Hkv, G*Dh + PAD]: q [1, H*Dh] (bf16 or
    fp32) per KV head's group, and the length after each."""
    width = out.shape[1] - PAD
    out[:, :width] = q.reshape(kv_heads, width)
    out[:, width] = length
    return out


def decode_attn(params: dict, query: np.ndarray, kv_cache: np.ndarray) -> tuple[np.ndarray]:
    kv_heads, dim = params["kv_heads"], params["head_dim"]
    group = params["heads"] // kv_heads
    length = int(query[0, group * dim])
    if length == 0:  # nothing cached: the kernel's empty sum gives zeros
        return (np.zeros((1, kv_heads * group * dim), np.float32),)
    q = query[:, : group * dim].reshape(kv_heads, group, dim)
    keys, values = kv_cache[:, 0, :length], kv_cache[:, 1, :length]  # [Hkv, L, Dh]
    scores = (q @ keys.transpose(0, 2, 1)) * np.float32(1.0 / np.sqrt(dim))  # [Hkv, G, L]
    weights = exp_bf16(scores - scores.max(axis=-1, keepdims=True))
    out = (weights @ values) / weights.sum(axis=-1, keepdims=True)
    return (out.reshape(1, kv_heads * group * dim),)
