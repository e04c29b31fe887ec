"""Causal grouped-query attention (kernels_src/flash_attn.cc).

The device kernel multiplies with the native bfp16 8x8x8 mmul (Q and K in blocks of 8
head dims, P and V in blocks of 8 keys; P as its bfp16 value plus that of its rest,
so that small weights are not rounded to zero) and keeps an online softmax: per key block
the exps are taken against the running maximum, 2^(scale s - scale max) in one fp32
multiply-accumulate and AIE2P's bf16 exp2, and the fp32 accumulators are rescaled by
a bf16 exp too; a query's sum is that of its bfp16 weights. This emulation takes the
same conversions and the same exps, but in a softmax over whole rows against their
final maximum: it differs from the kernel by the online rescaling (each block's
weights carry a bf16 rescale factor and are converted to bfp16 at another scale,
which moves their rounding) and the summation order. Scores, the weighted sum and
the normalization stay fp32; only the output is written as bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aierun.ops.numerics import BFP16_BLOCK, LOG2E, exp2_bf16, to_bf16, to_bfp16

Operand = Callable[[np.ndarray], np.ndarray]  # an operand as the matmul sees it


def flash_attn(params: dict, q: np.ndarray, *kv: np.ndarray) -> tuple[np.ndarray]:
    """q [S, H*Dh] against k, v [S, Hkv*Dh]; or, for a chunk after `past` positions,
    against the KV cache [Hkv, 2, C, Dh] up to the chunk's last position."""
    dims = params["heads"], params["kv_heads"], params["head_dim"]
    k, v = _cached_rows(kv[0], params["past"] + len(q)) if params["past"] else kv
    return (attend(q, k, v, *dims, causal=True, kernel=True),)


def _cached_rows(cache: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions [0, length) of a KV cache [Hkv, 2, C, Dh] as K and V rows [length, Hkv*Dh]."""
    heads, _, _, dim = cache.shape
    rows = cache[:, :, :length].transpose(1, 2, 0, 3).reshape(2, length, heads * dim)
    return rows[0], rows[1]


def _blocks(x: np.ndarray) -> np.ndarray:
    """bfp16 blocks of 8 along the last axis, which is zero-padded to whole blocks
    (zeros leave a block's exponent as it is)."""
    pad = -x.shape[-1] % BFP16_BLOCK
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]) if pad else x
    return np.asarray(to_bfp16(padded))[..., : x.shape[-1]]


def _split(x: np.ndarray) -> np.ndarray:
    """x as the matmul sees it in two bfp16 operands: its bfp16 value plus the bfp16
    value of its rest, bf16(x - value) (flash_attn.cc store_split, store_weights)."""
    value = _blocks(x)
    return value + _blocks(to_bf16(x - value).astype(np.float32))


def _exact(x: np.ndarray) -> np.ndarray:
    return x


def attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    heads: int,
    kv_heads: int,
    dim: int,
    causal: bool,
    block: int = 256,
    kernel: bool = False,
) -> np.ndarray:
    """q [Sq, H*Dh], k/v [Sk, Hkv*Dh] in fp32 -> [Sq, H*Dh]. With `causal`, query i
    sees keys up to Sk - Sq + i (the queries are the last Sq positions).

    Queries go in blocks (larger than the kernel's, for numpy's sake): a block only
    scores the keys its rows can see, which skips the masked upper triangle and
    bounds memory. `kernel`: flash_attn.cc's arithmetic (bfp16 operands, K and the
    weights each as a value and a rest, the bf16
    exp2, the sums of the bfp16 weights); otherwise fp32 with numpy's exp, for the
    host's decode attention (aierun/host/kv_cache.py)."""
    sq, sk = q.shape[0], k.shape[0]
    group = heads // kv_heads
    operand = _blocks if kernel else _exact
    # Q and K in blocks of head dims, V^T in blocks of keys (the kernel's operands).
    qh = operand(q.reshape(sq, kv_heads, group, dim)).transpose(1, 2, 0, 3)  # [Hkv, G, Sq, Dh]
    # K as its value and rest (one bfp16 K is the attention's largest error).
    keys = _split if kernel else _exact
    kh = keys(k.reshape(sk, kv_heads, 1, dim)).transpose(1, 2, 3, 0)  # [Hkv, 1, Dh, Sk]
    vh = operand(v.reshape(sk, kv_heads, 1, dim).transpose(1, 2, 3, 0)).swapaxes(-1, -2)
    scale = np.float32(1) / np.sqrt(np.float32(dim))
    out = np.empty((kv_heads, group, sq, dim), np.float32)
    for start in range(0, sq, block):
        stop = min(start + block, sq)
        keys = stop + (sk - sq) if causal else sk
        scores = qh[:, :, start:stop] @ kh[..., :keys]
        if causal:
            rows = np.arange(start, stop)[:, None] + (sk - sq)
            scores = np.where(np.arange(keys)[None, :] <= rows, scores, np.float32(-np.inf))
        weights = _weights(scores, scale, kernel)
        out[:, :, start:stop] = (weights @ vh[:, :, :keys]) / weights.sum(axis=-1, keepdims=True)
    return out.transpose(2, 0, 1, 3).reshape(sq, heads * dim)


def _weights(scores: np.ndarray, scale: np.float32, kernel: bool) -> np.ndarray:
    """The softmax numerators of raw scores against each row's max: the kernel's are
    p = 2^(fl(scale log2 e) s - fl(scale log2 e) max) in bf16, as the matmul sees them:
    p's bfp16 value (blocks of 8 keys) plus the bfp16 value of the rest, bf16(p - value)
    (flash_attn.cc multiplies both)."""
    if not kernel:
        scaled = scores * scale
        return np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    factor = scale * LOG2E
    top = scores.max(axis=-1, keepdims=True)
    return _split(exp2_bf16(scores * factor - top * factor))
