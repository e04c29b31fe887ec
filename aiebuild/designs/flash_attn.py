"""Causal grouped-query attention (aierun/ops/attention.py, kernels_src/flash_attn.cc).

One core walks (head, query block) pairs; for each it streams every key/value
block of that head's KV group through an online softmax kept in fp32 (running
max, running sum, fp32 accumulator) and writes the normalized block as bf16.
Blocks above the causal diagonal are streamed but skipped by the kernel: it keeps
the DMA patterns affine (4-D) at the price of twice the K/V traffic; a causal
pattern per query block is the next optimization.

The kernel keeps the key- and query-block indices in its state buffer, so the
core's loops stay loops (no S / BLOCK unrolled copies in the 16 KiB program
memory). The runtime sequence has one phase per KV head (its query heads, K, V
and outputs: four DMA tasks live at a time).

Core memory at BLOCK = 32, head_dim 64: q, k, v, o 2 x 4 KiB each, state 8.3 KiB
= 40.3 KiB (BLOCK = 64 would need 64 KiB for the fifos alone)."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiebuild.designs.common import (
    CoreBuffer,
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    tap,
    tiles,
)
from aierun.abi import BF16, ArgSpec, Launch

BLOCK = 32  # query rows and key rows per block (the kernel needs BQ == BK)


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object(
        "flash_attn.cc", {"DH": launch.params["head_dim"], "BQ": BLOCK, "BK": BLOCK}
    )


def core_buffers(launch: Launch, args: list[ArgSpec]) -> list[CoreBuffer]:
    """q, k, v blocks in, o blocks out, and the state [acc | max | sum | key block,
    query block] (flash_attn.cc's State)."""
    dim = launch.params["head_dim"]
    tiles(launch.params["S"], BLOCK, "S (the prefill bucket)")
    state = BLOCK * dim + 2 * BLOCK + 2
    return [
        *(CoreBuffer(f"{t}_in", (BLOCK, dim), BF16) for t in "qkv"),
        CoreBuffer("o_out", (BLOCK, dim), BF16),
        CoreBuffer("state", (state,), np.dtype(np.float32), kind="state"),
    ]


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_

    p = launch.params
    s, heads, kv_heads, dim = p["S"], p["heads"], p["kv_heads"], p["head_dim"]
    group, blocks = heads // kv_heads, tiles(s, BLOCK, "S")
    buffers = core_buffers(launch, args)
    q_in, k_in, v_in, o_out, state = (buf.make(lib) for buf in buffers)
    block, state_ty = buffers[0].type, buffers[-1].type
    suffix, obj = f"{dim}_{BLOCK}x{BLOCK}", kernel(launch, args).name
    start = lib.Kernel(f"flash_attn_init_{suffix}", obj, [state_ty])
    step = lib.Kernel(f"flash_attn_step_{suffix}", obj, [block, block, block, state_ty])
    finish = lib.Kernel(f"flash_attn_finish_{suffix}", obj, [state_ty, block, np.int32])

    def core(qs, ks, vs, out, acc, start_fn, step_fn, finish_fn):
        for _ in range_(heads * blocks):  # (head, query block) pairs, in order
            start_fn(acc)
            queries = qs.acquire(1)
            for _ in range_(blocks):
                keys, values = ks.acquire(1), vs.acquire(1)
                step_fn(queries, keys, values, acc)
                ks.release(1)
                vs.release(1)
            qs.release(1)
            result = out.acquire(1)
            finish_fn(acc, result, blocks)  # advances the query block, wrapping per head
            out.release(1)

    worker = lib.Worker(
        core, [q_in.cons(), k_in.cons(), v_in.cons(), o_out.prod(), state, start, step, finish]
    )
    q_row, kv_row = heads * dim, kv_heads * dim
    # Heads in order h = kv_head * group + g. Phase = one KV head: its group's query
    # heads (all their query blocks), and its whole K/V sequence replayed per query
    # head and query block.
    q_taps = [
        tap(args[0].shape, h * group * dim, [group, blocks, BLOCK, dim],
            [dim, BLOCK * q_row, q_row, 1])
        for h in range(kv_heads)
    ]  # fmt: skip
    kv_taps = [
        tap(args[1].shape, h * dim, [group * blocks, blocks, BLOCK, dim],
            [0, BLOCK * kv_row, kv_row, 1])
        for h in range(kv_heads)
    ]  # fmt: skip
    o_taps = [
        tap(args[3].shape, h * group * dim, [group, blocks, BLOCK, dim],
            [dim, BLOCK * q_row, q_row, 1])
        for h in range(kv_heads)
    ]  # fmt: skip
    fills = [(q_in.prod(), q_taps), (k_in.prod(), kv_taps), (v_in.prod(), kv_taps)]
    return stream_program(args, fills, [(o_out.cons(), o_taps)], [worker])
