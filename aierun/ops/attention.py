"""Causal grouped-query attention (kernels_src/flash_attn.cc).

The device kernel streams K/V blocks with an online softmax in fp32 whose exp is
AIE2P's bf16-precise exp2. This emulation takes the same exp (numerics.exp_bf16) in a
softmax over whole rows, so it differs from the kernel by the online rescaling (each
block's exps are taken against a running maximum, then rescaled by a bf16 exp too) and
the summation order, not by the exp's precision. Scores, softmax and the weighted sum
stay fp32; only the output is written as bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aierun.ops.numerics import exp_bf16


def flash_attn(params: dict, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray]:
    dims = params["heads"], params["kv_heads"], params["head_dim"]
    return (attend(q, k, v, *dims, causal=True, exp=exp_bf16),)


def attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    heads: int,
    kv_heads: int,
    dim: int,
    causal: bool,
    block: int = 256,
    exp: Callable[[np.ndarray], np.ndarray] = np.exp,
) -> np.ndarray:
    """q [Sq, H*Dh], k/v [Sk, Hkv*Dh] in fp32 -> [Sq, H*Dh]. With `causal`, query i
    sees keys up to Sk - Sq + i (the queries are the last Sq positions).

    Queries go in blocks (larger than the kernel's, for numpy's sake): a block only
    scores the keys its rows can see, which skips the masked upper triangle and
    bounds memory. `exp` is numpy's for the host's decode attention
    (aierun/host/kv_cache.py), the kernel's bf16-precise one for the NPU's (flash_attn)."""
    sq, sk = q.shape[0], k.shape[0]
    group = heads // kv_heads
    qh = q.reshape(sq, kv_heads, group, dim).transpose(1, 2, 0, 3)  # [Hkv, G, Sq, Dh]
    kh = k.reshape(sk, kv_heads, 1, dim).transpose(1, 2, 3, 0)  # [Hkv, 1, Dh, Sk]
    vh = v.reshape(sk, kv_heads, 1, dim).transpose(1, 2, 0, 3)  # [Hkv, 1, Sk, Dh]
    scale = np.float32(1.0 / np.sqrt(dim))
    out = np.empty((kv_heads, group, sq, dim), np.float32)
    for start in range(0, sq, block):
        stop = min(start + block, sq)
        keys = stop + (sk - sq) if causal else sk
        scores = (qh[:, :, start:stop] @ kh[..., :keys]) * scale
        if causal:
            rows = np.arange(start, stop)[:, None] + (sk - sq)
            scores = np.where(np.arange(keys)[None, :] <= rows, scores, np.float32(-np.inf))
        scores = exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, :, start:stop] = (scores @ vh[:, :, :keys]) / scores.sum(axis=-1, keepdims=True)
    return out.transpose(2, 0, 1, 3).reshape(sq, heads * dim)
