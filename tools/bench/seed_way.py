"""The seed's host operations, done the way the seed document describes them, as the
baseline `doit bench` measures the runtime's host ops against.

The seed (docs/design.md, "The seed") pads every prompt to seq_len, keeps
its activations in bf16 and its KV cache in bf16, laid out per KV head
[layers, Hkv, max_seq, Dh], allocated for each prompt. Per op:

- eos_pad: the prompt's ids filled up to seq_len with EOS, as a list;
- embed_lookup: a gather from the bf16 table in memory, widened to fp32, narrowed
  back to the bf16 the prefill ELF reads;
- kv_cache_extract (per layer): the ELF's k_roped and v [seq_len, Hkv*Dh], every
  padded row, cast, reshaped to heads and transposed into the bf16 cache;
- final_rms_norm: the last layer's bf16 output [seq_len, E] widened to fp32, then the
  RMSNorm of the prediction row, narrowed to bf16 for the LM head;
- decode_attention (per layer): the new K/V row written into the cache, the cache up to
  the current position widened to fp32, repeated for the query heads of each group,
  scores, softmax and weighted sum per head, the result narrowed to bf16.
"""

from __future__ import annotations

import numpy as np

from aierun.abi import BF16


def eos_pad(ids: list[int], seq_len: int, eos: int) -> list[int]:
    return ids + [eos] * (seq_len - len(ids))


def embed_lookup(table: np.ndarray, ids: list[int]) -> np.ndarray:
    return table[ids].astype(np.float32).astype(BF16)


def new_kv_cache(layers: int, kv_heads: int, max_seq: int, head_dim: int) -> np.ndarray:
    """One of the two caches, allocated when a prompt starts (outside the op's timer)."""
    return np.zeros((layers, kv_heads, max_seq, head_dim), BF16)


def kv_cache_extract(
    k_cache: np.ndarray, v_cache: np.ndarray, layer: int, k_roped: np.ndarray, v: np.ndarray
) -> None:
    _, kv_heads, _, dim = k_cache.shape
    seq_len = len(k_roped)
    k_cache[layer, :, :seq_len] = (
        k_roped.astype(BF16).reshape(seq_len, kv_heads, dim).transpose(1, 0, 2)
    )
    v_cache[layer, :, :seq_len] = v.astype(BF16).reshape(seq_len, kv_heads, dim).transpose(1, 0, 2)


def final_rms_norm(hidden: np.ndarray, row: int, weight: np.ndarray, eps: float) -> np.ndarray:
    last = np.asarray(hidden, dtype=np.float32)[row : row + 1]
    normed = last / np.sqrt(np.mean(last * last, axis=-1, keepdims=True) + eps)
    return (normed * weight.astype(np.float32)).flatten().astype(BF16)


def decode_attention(
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    pos: int,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    heads: int,
) -> np.ndarray:
    """One layer's caches [Hkv, max_seq, Dh]; q [H*Dh], k/v [Hkv*Dh] of position `pos`."""
    kv_heads, _, dim = k_cache.shape
    k_cache[:, pos] = k.reshape(kv_heads, dim)
    v_cache[:, pos] = v.reshape(kv_heads, dim)
    keys = np.repeat(k_cache[:, : pos + 1].astype(np.float32), heads // kv_heads, axis=0)
    values = np.repeat(v_cache[:, : pos + 1].astype(np.float32), heads // kv_heads, axis=0)
    queries = q.astype(np.float32).reshape(heads, dim)
    scores = np.einsum("hd,hld->hl", queries, keys) / np.sqrt(dim)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("hl,hld->hd", weights, values).reshape(-1).astype(BF16)
