"""The host's CPU ops: what it writes into the device's KV cache (the prompt's
positions, each decode position, a kept prefix), the in-memory embedding lookup, and
the emulator's static buffers kept only as fp32."""

from __future__ import annotations

import numpy as np
import pytest

from aierun.abi import BF16, ArgSpec, Role
from aierun.devices.emu import EmuDevice
from aierun.host.embedding import BLOCK_ROWS, EmbeddingTable, pad_prompt
from aierun.host.kv_cache import KVCache
from aierun.ops.kv_store import per_head

LAYERS, KV_HEADS, HEADS, DIM = 2, 2, 6, 8  # groups of 3 query heads


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(BF16)


def device_kv(positions: int) -> KVCache:
    arg = ArgSpec("kv_cache", (KV_HEADS, 2, positions, DIM), "f32", Role.INPUT)
    return KVCache.allocate(EmuDevice(), arg, LAYERS)


def test_the_prompt_and_decode_positions_land_per_head_in_the_device_buffer():
    rng = np.random.default_rng(0)
    k, v = random_bf16(rng, (7, KV_HEADS * DIM)), random_bf16(rng, (7, KV_HEADS * DIM))
    # What the kv_store launch leaves in the prefill ELF's cache buffers: fp32 per KV head.
    device_k, device_v = (per_head(rows[:5], KV_HEADS).astype(np.float32) for rows in (k, v))
    cache = device_kv(9)
    cache.keep_prompt(1, device_k, device_v, 5)
    cache.store(1, 5, k[5:], v[5:])
    held = cache.buffers[1].host
    assert cache.buffers[1].written and cache.capacity == 9
    for head in range(KV_HEADS):
        columns = slice(head * DIM, (head + 1) * DIM)
        np.testing.assert_array_equal(held[head, 0, :7], k[:, columns].astype(np.float32))
        np.testing.assert_array_equal(held[head, 1, :7], v[:, columns].astype(np.float32))
    assert not held[:, :, 7:].any()  # nothing past what was stored


def test_a_detached_copy_owns_its_positions_and_restores_them():
    rng = np.random.default_rng(1)
    cache = device_kv(6)
    rows = random_bf16(rng, (4, KV_HEADS * DIM)), random_bf16(rng, (4, KV_HEADS * DIM))
    for layer in range(LAYERS):
        cache.store(layer, 0, *rows)
    held = cache.detached(3)
    assert held.nbytes == LAYERS * 2 * KV_HEADS * 3 * DIM * 4
    before = [buffer.host.copy() for buffer in cache.buffers]
    for buffer in cache.buffers:
        buffer.host[...] = 0  # another conversation's prefill overwrites the cache
    cache.restore(held)
    for buffer, old in zip(cache.buffers, before, strict=True):
        np.testing.assert_array_equal(buffer.host[:, :, :3], old[:, :, :3])
        assert not buffer.host[:, :, 3:].any()


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
