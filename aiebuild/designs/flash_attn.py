"""Causal grouped-query attention (aierun/ops/attention.py, kernels_src/flash_attn.cc).

One core walks (head, query block) pairs; for each it streams every key/value
block of that head's KV group through an online softmax kept in fp32 (running
max, running sum, fp32 accumulator) and writes the normalized block as bf16.
Blocks above the causal diagonal are streamed but skipped by the kernel: it keeps
the DMA patterns affine (4-D) at the price of twice the K/V traffic; a causal
pattern per query block is the next optimization.
"""

from __future__ import annotations

import numpy as np

from aiebuild.designs.common import (
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    tap,
    tensor,
    tiles,
)
from aierun.abi import BF16, ArgSpec, Launch

BLOCK = 64  # query rows and key rows per block


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    return kernel_object(
        "flash_attn.cc", {"DH": launch.params["head_dim"], "BQ": BLOCK, "BK": BLOCK}
    )


def design(launch: Launch, args: list[ArgSpec]) -> str:
    lib = iron()
    from aie.iron.controlflow import range_

    p = launch.params
    s, heads, kv_heads, dim = p["S"], p["heads"], p["kv_heads"], p["head_dim"]
    group, blocks = heads // kv_heads, tiles(s, BLOCK, "S")
    block = tensor((BLOCK, dim), BF16)
    acc_ty = tensor(BLOCK * dim + 2 * BLOCK + 1, np.dtype(np.float32))  # acc, max, sum, step
    q_in, k_in, v_in = (lib.ObjectFifo(block, name=f"{t}_in") for t in "qkv")
    o_out = lib.ObjectFifo(block, name="o_out")
    suffix = f"{dim}_{BLOCK}x{BLOCK}"
    obj = kernel(launch, args).name
    start = lib.Kernel(f"flash_attn_init_{suffix}", obj, [acc_ty])
    step = lib.Kernel(f"flash_attn_step_{suffix}", obj, [block, block, block, acc_ty, int])
    finish = lib.Kernel(f"flash_attn_finish_{suffix}", obj, [acc_ty, block])
    state = lib.Buffer(acc_ty, name="state")

    def core(qs, ks, vs, out, acc, start_fn, step_fn, finish_fn):
        for _ in range_(heads):
            for query_block in range(blocks):  # unrolled: the kernel needs the block index
                start_fn(acc)
                queries = qs.acquire(1)
                for _ in range_(blocks):
                    keys, values = ks.acquire(1), vs.acquire(1)
                    step_fn(queries, keys, values, acc, query_block)
                    ks.release(1)
                    vs.release(1)
                qs.release(1)
                result = out.acquire(1)
                finish_fn(acc, result)
                out.release(1)

    worker = lib.Worker(
        core, [q_in.cons(), k_in.cons(), v_in.cons(), o_out.prod(), state, start, step, finish]
    )
    q_row, kv_row = heads * dim, kv_heads * dim
    # Heads in order h = kv_head * group + g, so one pattern per KV head replays its
    # whole K/V sequence for each of its group's heads and query blocks.
    q_tap = [tap(args[0].shape, 0, [heads, blocks, BLOCK, dim], [dim, BLOCK * q_row, q_row, 1])]
    kv_taps = [
        tap(
            args[1].shape,
            h * dim,
            [group * blocks, blocks, BLOCK, dim],
            [0, BLOCK * kv_row, kv_row, 1],
        )
        for h in range(kv_heads)
    ]
    o_tap = [tap(args[3].shape, 0, [heads, blocks, BLOCK, dim], [dim, BLOCK * q_row, q_row, 1])]
    fills = [(q_in.prod(), q_tap), (k_in.prod(), kv_taps), (v_in.prod(), kv_taps)]
    return stream_program(args, fills, [(o_out.cons(), o_tap)], [worker])
