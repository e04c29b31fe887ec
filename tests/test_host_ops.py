"""The host's CPU ops: the per-KV-head KV cache (the prompt's part kept in the
device's buffers) and decode attention, the in-memory embedding lookup, and the
emulator's static buffers kept only as fp32."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from aierun.abi import BF16, ArgSpec, Role
from aierun.devices.emu import EmuDevice
from aierun.host.embedding import BLOCK_ROWS, EmbeddingTable, pad_prompt
from aierun.host.kv_cache import KVCache, decode_attention
from aierun.ops.attention import attend
from aierun.ops.kv_store import per_head

LAYERS, KV_HEADS, HEADS, DIM = 2, 2, 6, 8  # groups of 3 query heads


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(BF16)


def test_the_prompt_stays_in_the_device_buffers_and_decode_positions_are_appended():
    rng = np.random.default_rng(0)
    k, v = random_bf16(rng, (7, KV_HEADS * DIM)), random_bf16(rng, (7, KV_HEADS * DIM))
    # What the kv_store launch leaves in the device's cache buffers: fp32 per KV head.
    device_k, device_v = (per_head(rows[:5], KV_HEADS).astype(np.float32) for rows in (k, v))
    cache = KVCache(LAYERS, KV_HEADS, DIM, capacity=1)
    cache.keep_prompt(1, device_k, device_v, 5)
    cache.store(1, 5, k[5:], v[5:])
    assert cache.capacity >= 7
    (prompt_k, prompt_v), (appended_k, appended_v) = cache.parts(1, 7)
    assert np.shares_memory(prompt_k, device_k) and np.shares_memory(prompt_v, device_v)
    assert appended_k.dtype == np.float32 and appended_k.shape == (KV_HEADS, 2, DIM)
    for head in range(KV_HEADS):
        columns = slice(head * DIM, (head + 1) * DIM)
        keys = np.concatenate([prompt_k[head], appended_k[head]])
        values = np.concatenate([prompt_v[head], appended_v[head]])
        np.testing.assert_array_equal(keys, k[:, columns].astype(np.float32))
        np.testing.assert_array_equal(values, v[:, columns].astype(np.float32))
        assert appended_k[head].flags.c_contiguous
    with pytest.raises(ValueError, match="inside the prompt"):
        cache.store(1, 4, k[4:5], v[4:5])


def test_a_grown_cache_keeps_what_was_appended():
    rng = np.random.default_rng(1)
    cache = KVCache(LAYERS, KV_HEADS, DIM, capacity=4)
    rows = random_bf16(rng, (4, KV_HEADS * DIM)), random_bf16(rng, (4, KV_HEADS * DIM))
    cache.store(0, 0, *rows)
    before = cache.appended.copy()
    cache.grow(9)
    assert cache.capacity == 9
    np.testing.assert_array_equal(cache.appended[..., :4, :], before)


def test_storing_decode_positions_faults_no_pages_in():
    """Each position lands on a new page of every head's matrix: were the cache's
    pages mapped lazily (np.zeros), every decode step would take a page fault per
    KV head and layer (measured: 10x the attention itself on the default model)."""
    rng = np.random.default_rng(5)
    heads, dim, positions = 8, 64, 64
    cache = KVCache(LAYERS, heads, dim, capacity=positions)
    rows = random_bf16(rng, (1, heads * dim))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for position in range(positions):
        cache.store(position % LAYERS, position, rows, rows)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < positions, faults  # lazily mapped: >= 2 * heads per position


def test_decode_attention_appends_then_matches_attention_over_all_positions():
    rng = np.random.default_rng(2)
    prompt = 11
    k, v = (
        random_bf16(rng, (prompt + 1, KV_HEADS * DIM)),
        random_bf16(rng, (prompt + 1, KV_HEADS * DIM)),
    )
    q = random_bf16(rng, (1, HEADS * DIM))
    cache = KVCache(LAYERS, KV_HEADS, DIM, capacity=32)
    device = (per_head(rows[:prompt], KV_HEADS).astype(np.float32) for rows in (k, v))
    cache.keep_prompt(1, *device, prompt)
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


@pytest.mark.slow
def test_prefill_reuses_the_cache_made_at_prepare(session):
    cache = session.kv
    assert cache.capacity >= session.artifacts.buckets[-1]
    ids = session.checkpoint.encode_prompt("Hello")
    session.prefill(ids)
    session.prefill(ids + ids)
    assert session.kv is cache
