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
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

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
    bounds memory. `exp` is numpy's for the host's decode attention, the kernel's
    bf16-precise one for the NPU's (flash_attn)."""
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


class KVCache:
    """The host's K/V of every layer for decode attention.

    Laid out per KV head, [layers, Hkv, capacity, Dh], so that one head's keys and
    values are each one contiguous matrix: the scores of all query heads of a group
    are one GEMM against it, the weighted sum another. Stored as fp32 (exact for the
    bf16 the device writes), the type numpy's BLAS multiplies: each position is
    converted once when it is stored, never when it is read. The arrays are touched
    when allocated, so storing a prompt does not fault their pages in."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int):
        shape = (layers, kv_heads, capacity, head_dim)
        self.k = np.empty(shape, np.float32)
        self.v = np.empty(shape, np.float32)
        # Rows are widened here first, in one contiguous pass, then moved per head:
        # twice as fast as widening while transposing (64-element runs per cast call).
        self._widened = np.empty((capacity, kv_heads * head_dim), np.float32)
        for array in (self.k, self.v, self._widened):
            array.fill(0)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Rows [start, start + len(k)) from device outputs shaped [rows, Hkv*Dh]."""
        _, heads, _, dim = self.k.shape
        n = len(k)
        widened = self._widened[:n]
        for stored, rows in ((self.k, k), (self.v, v)):
            np.copyto(widened, rows)
            np.copyto(
                stored[layer, :, start : start + n], widened.reshape(n, heads, dim).swapaxes(0, 1)
            )

    def grown(self, capacity: int) -> KVCache:
        """A larger cache holding this one's contents."""
        layers, heads, old, dim = self.k.shape
        bigger = KVCache(layers, heads, dim, capacity)
        bigger.k[:, :, :old] = self.k
        bigger.v[:, :, :old] = self.v
        return bigger

    def attend(self, layer: int, q: np.ndarray, length: int) -> np.ndarray:
        """One query row q [1, H*Dh] against positions [0, length) -> fp32 [1, H*Dh].

        The exact softmax in fp32 (numpy's exp): this runs on the host CPU, whose
        arithmetic is fp32, not on the NPU. On one BLAS thread: these GEMMs are small,
        and handing half of one to a second thread costs more than it saves (on a busy
        machine, a whole scheduler time slice while that thread waits for a core)."""
        with _blas().limit(limits=1, user_api="blas"):
            return self._attend(layer, q, length)

    def _attend(self, layer: int, q: np.ndarray, length: int) -> np.ndarray:
        _, kv_heads, _, dim = self.k.shape
        group = q.shape[-1] // (kv_heads * dim)
        queries = q.reshape(kv_heads, group, dim).astype(np.float32)  # [Hkv, G, Dh]
        keys = self.k[layer, :, :length]  # [Hkv, L, Dh], each head contiguous
        # A group's query heads in one GEMM per KV head, its keys the untransposed left
        # operand (3x faster than queries @ keys^T, which has BLAS pack the keys first).
        scores = np.ascontiguousarray((keys @ queries.transpose(0, 2, 1)).transpose(0, 2, 1))
        scores *= np.float32(1.0 / np.sqrt(dim))  # [Hkv, G, L]
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        out = scores @ self.v[layer, :, :length]  # [Hkv, G, Dh]
        out /= scores.sum(axis=-1, keepdims=True)
        return out.reshape(1, kv_heads * group * dim)


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()
