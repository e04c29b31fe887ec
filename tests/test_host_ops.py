"""The host's CPU ops: the per-KV-head KV cache and decode attention, the in-memory
embedding lookup, and the emulator's static buffers kept only as fp32."""

from __future__ import annotations

import numpy as np

from aierun.abi import BF16, ArgSpec, Role
from aierun.devices.emu import EmuDevice
from aierun.ops.attention import KVCache, attend
from aierun.ops.embedding import BLOCK_ROWS, EmbeddingTable
from aierun.pipeline import decode_attention, pad_prompt

LAYERS, KV_HEADS, HEADS, DIM = 2, 2, 6, 8  # groups of 3 query heads


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(BF16)


def test_kv_cache_keeps_each_kv_head_contiguous_and_fp32():
    rng = np.random.default_rng(0)
    cache = KVCache(LAYERS, KV_HEADS, DIM, capacity=16)
    k, v = random_bf16(rng, (5, KV_HEADS * DIM)), random_bf16(rng, (5, KV_HEADS * DIM))
    cache.store(1, 3, k, v)
    assert cache.k.dtype == np.float32 and cache.k.shape == (LAYERS, KV_HEADS, 16, DIM)
    for head in range(KV_HEADS):
        columns = slice(head * DIM, (head + 1) * DIM)
        np.testing.assert_array_equal(cache.k[1, head, 3:8], k[:, columns].astype(np.float32))
        np.testing.assert_array_equal(cache.v[1, head, 3:8], v[:, columns].astype(np.float32))
        assert cache.k[1, head, 3:8].flags.c_contiguous
    assert not cache.k[0].any() and not cache.k[1, :, :3].any() and not cache.k[1, :, 8:].any()


def test_a_grown_cache_keeps_what_was_stored():
    rng = np.random.default_rng(1)
    cache = KVCache(LAYERS, KV_HEADS, DIM, capacity=4)
    cache.store(0, 0, random_bf16(rng, (4, KV_HEADS * DIM)), random_bf16(rng, (4, KV_HEADS * DIM)))
    grown = cache.grown(9)
    assert grown.capacity == 9
    np.testing.assert_array_equal(grown.k[:, :, :4], cache.k)
    np.testing.assert_array_equal(grown.v[:, :, :4], cache.v)


def test_decode_attention_appends_then_matches_attention_over_all_positions():
    rng = np.random.default_rng(2)
    prompt = 11
    k, v = (
        random_bf16(rng, (prompt + 1, KV_HEADS * DIM)),
        random_bf16(rng, (prompt + 1, KV_HEADS * DIM)),
    )
    q = random_bf16(rng, (1, HEADS * DIM))
    cache = KVCache(LAYERS, KV_HEADS, DIM, capacity=32)
    cache.store(1, 0, k[:prompt], v[:prompt])
    out = decode_attention(cache, 1, prompt, q, k[prompt:], v[prompt:])
    expected = attend(
        q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
        HEADS, KV_HEADS, DIM, causal=False,
    )  # fmt: skip
    assert out.dtype == BF16 and out.shape == (1, HEADS * DIM)
    np.testing.assert_allclose(out.astype(np.float32), expected, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(cache.attend(1, q, prompt + 1), expected, rtol=1e-5, atol=1e-6)


def test_embedding_lookup_widens_rows_across_blocks_into_the_given_array():
    rng = np.random.default_rng(3)
    table = random_bf16(rng, (300, 16))
    ids = rng.integers(0, 300, BLOCK_ROWS + 37)
    out = np.full((len(ids), 16), np.nan, np.float32)
    EmbeddingTable(table).lookup(ids, out)
    np.testing.assert_array_equal(out, table[ids].astype(np.float32))


def test_the_prompt_is_padded_to_its_bucket():
    np.testing.assert_array_equal(pad_prompt([5, 6, 7], 6, 0), [5, 6, 7, 0, 0, 0])


def test_emu_weights_live_as_fp32_and_read_back_as_written():
    rng = np.random.default_rng(4)
    weight = random_bf16(rng, (4, 8))
    buffer = EmuDevice().alloc(ArgSpec("w", (4, 8), "bf16", Role.WEIGHT, "w"), "w")
    buffer.write(weight)
    np.testing.assert_array_equal(buffer.as_f32(), weight.astype(np.float32))
    np.testing.assert_array_equal(buffer.host, weight)  # the bf16 view, rebuilt from fp32


def test_prefill_reuses_the_cache_made_at_prepare(session):
    cache = session.kv
    assert cache.capacity >= session.artifacts.buckets[-1]
    ids = session.checkpoint.encode_prompt("Hello")
    session.prefill(ids)
    session.prefill(ids + ids)
    assert session.kv is cache
