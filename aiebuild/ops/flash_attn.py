"""Causal grouped-query attention over the array (aierun/ops/attention.py,
kernels_src/flash_attn.cc).

A work item is one (query head, query block) pair: its core folds every key/value
block of the head's KV group into an online softmax kept in fp32 (running max,
running sum, fp32 accumulator) and writes the normalized block as bf16. Blocks above
the causal diagonal are streamed but skipped by the kernel: every core of the launch
then needs the same K/V stream, which is what lets one stream serve them all.

The runtime sequence has one phase per KV head; the launch's `core_rows` divide the
head's group of query heads (or, with one query head per KV head, take successive
query blocks too, so the whole array works) and its `columns` take successive query
blocks:
- K and V of the KV head enter at the second input channels of shims 0 and 1; the
  memory tile of column 0 joins each K block with its V block into one [K; V] object
  broadcast to every core (a core has 2 input DMA channels: [K; V] and its queries);
- column c's shim streams, per round, the query blocks of its cores (core_rows
  consecutive heads of one query block, or core_rows consecutive blocks of one head)
  as one object broadcast to them all (each core converts its block in it to bfp16
  operands at the start of the round, then releases it: depth 1, the next round's
  streams in during the key walk), and drains the output blocks its memory tile joins
  back from its cores.
Core (c, r) starts at query block (c * core_rows + r) // group and steps by
columns * core_rows / group blocks per round; the kernel keeps these and its head
in the object in its state (initial values of the core's state buffer), so the
core's loops stay loops.

Core memory at head_dim 64 (32-row blocks; `block` keeps these bytes at 128), 4 core
rows: queries 16 KiB, [K; V] 2 x 8 KiB, o 2 x 4 KiB, state 10.1 KiB (the fp32 O^T and
sums blocks, a strip's scores, the max), bfp16 operands 9.7 KiB (Q once per query
block, K as value and rest and V^T once per key block for all its query strips, a
strip's weights as value and rest, the identity and ones), stack 1 KiB = 60.9 KiB of
64."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiebuild.array.geometry import COLUMNS, CORE_ROWS, cores, largest_divisor
from aiebuild.ops.common import (
    KernelObject,
    Op,
    Stream,
    array,
    core_tile,
    iron,
    joined_columns,
    kernel_object,
    mem_tile,
    scratch_buffer,
    shim_tile,
    state_buffer,
    stream_program,
    tap,
    tensor,
    tiles,
)
from aierun.abi import BF16, ArgSpec, Launch

# Query and key rows per block: 32 at head_dim 64. A larger head dim takes fewer rows, so
# that every block object (queries, [K; V], o) and the state keep the bytes of 32 x 64
# and the core memory above: at head_dim 128 (Llama 3 3B/8B, Qwen3) 32-row blocks would
# need 91 KiB of a core's 64 (queries 32, [K; V] 2 x 16, o 2 x 8, state 24.3 KiB).
BLOCK_ELEMENTS = 32 * 64
KEY_GROUP = 8  # flash_attn.cc MT: block rows come in whole mmul groups of 8 keys


def block(head_dim: int) -> int:
    """Rows per query and key block at this head dim."""
    return BLOCK_ELEMENTS // head_dim


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    rows = block(launch.params["head_dim"])
    return kernel_object("flash_attn.cc", {"DH": launch.params["head_dim"], "BQ": rows, "BK": rows})


MMUL = 8  # flash_attn.cc N8: the bfp16 8x8x8 mmul's rows, depth and columns
BFP16_BLOCK_BYTES = 9  # 8 int8 mantissas and a shared exponent (bfp16ebs8)


def initial_state(dim: int, first: int, step: int, head: int) -> np.ndarray:
    """flash_attn.cc's State: [acc (per strip of 8 queries: dim / 8 O^T blocks and a
    sums block, 64 fp32 each) | the strip's scores (one 8 x 8 block per key group) |
    max | key block, query block, first query block, query block step, head in the
    queries object], the counters int32 in fp32 words."""
    rows = block(dim)
    blocks = rows // MMUL * (dim // MMUL + 1) + rows // MMUL
    state = np.zeros(blocks * MMUL * MMUL + rows + 5, np.float32)
    state[-4:].view(np.int32)[:] = (first, first, step, head)
    return state


def operand_bytes(dim: int) -> int:
    """flash_attn.cc's Operands: the bfp16 operands of the queries, the key block's K
    (a value and a rest) and V^T (dim / 8 x rows / 8 operands each), a strip's weights
    (a value and a rest per key group) and the identity and ones operands."""
    rows = block(dim)
    operands = 4 * (rows // MMUL) * (dim // MMUL) + 2 * (rows // MMUL) + 2
    return operands * MMUL * BFP16_BLOCK_BYTES


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_
    p = launch.params
    heads, kv_heads, dim = p["heads"], p["kv_heads"], p["head_dim"]
    columns, rows = array(launch)
    BLOCK = block(dim)  # noqa: N806 (the kernel's block rows, as the -D name)
    group, blocks = heads // kv_heads, tiles(p["S"], BLOCK, "S (the prefill bucket)")
    past = tiles(p["past"], BLOCK, "past (the positions before the chunk)")
    keys = past + blocks  # key blocks each round walks: the past's, then the chunk's
    step = columns * rows // group  # query blocks per round
    rounds = tiles(blocks, step, "query blocks (per round of the array)")
    block_ty = tensor((BLOCK, dim), BF16)
    suffix, obj = f"{dim}_{BLOCK}x{BLOCK}", kernel(launch, args).name
    state_ty = tensor(initial_state(dim, 0, 1, 0).shape, np.dtype(np.float32))
    queries_ty = tensor((rows, BLOCK, dim), BF16)
    operands_ty = tensor((operand_bytes(dim),), np.dtype(np.uint8))
    start = lib.Kernel(f"flash_attn_init_{suffix}", obj, [queries_ty, state_ty, operands_ty])
    fold = lib.Kernel(f"flash_attn_step_{suffix}", obj,
                      [tensor((2 * BLOCK * dim,), BF16), state_ty, operands_ty])  # fmt: skip
    finish = lib.Kernel(f"flash_attn_finish_{suffix}", obj, [state_ty, block_ty, np.int32])

    kv = lib.ObjectFifo(tensor((2 * BLOCK * dim,), BF16), name="kv")
    k_in, v_in = kv.prod().join([0, BLOCK * dim], tile=mem_tile(lib, 0),
                                obj_types=[block_ty] * 2, names=["k_in", "v_in"])  # fmt: skip
    q_in = [lib.ObjectFifo(queries_ty, depth=1, name=f"q{c}") for c in range(columns)]
    o_out, o_core = joined_columns(lib, "o", columns, rows, (BLOCK, dim), BF16)

    def core(qs, kvs, out, state, operands, start_fn, fold_fn, finish_fn):
        for _ in range_(kv_heads * rounds):  # (KV head, round) pairs, in order
            # The queries are converted to bfp16 operands at the start: their object
            # is free for the next round's during the key walk.
            queries = qs.acquire(1)
            start_fn(queries, state, operands)
            qs.release(1)
            for _ in range_(keys):
                keys_values = kvs.acquire(1)
                fold_fn(keys_values, state, operands)
                kvs.release(1)
            result = out.acquire(1)
            finish_fn(state, result, keys)  # steps to this core's next query block
            out.release(1)

    workers = [
        lib.Worker(core, [q_in[c].cons(), kv.cons(), o_core[c][r].prod(),
                          state_buffer(lib, f"state_{c}_{r}",
                                       initial_state(dim, past + (c * rows + r) // group, step,
                                                     r)),
                          scratch_buffer(lib, f"operands_{c}_{r}", (operand_bytes(dim),),
                                         np.dtype(np.uint8)),
                          start, fold, finish], tile=core_tile(lib, c, r))
        for c in range(columns) for r in range(rows)
    ]  # fmt: skip
    q_row, kv_row = heads * dim, kv_heads * dim

    def query_tap(shape: tuple[int, ...], c: int, h: int) -> Any:
        """Column c's query (or output) blocks for KV head h: per round, `rows`
        consecutive heads of one query block, or (one query head per KV head) `rows`
        consecutive query blocks of the head."""
        first_block, first_head = c * rows // group, h * group + c * rows % group
        per_core = dim if group > 1 else BLOCK * q_row  # the next head, or block
        start = first_block * BLOCK * q_row + first_head * dim
        strides = [step * BLOCK * q_row, per_core, q_row, 1]
        return tap(shape, start, [rounds, rows, BLOCK, dim], strides)

    def kv_tap(shape: tuple[int, ...], h: int, kind: int) -> Any:
        """KV head h's keys (kind 0) or values (1), block by block, replayed for every
        round: from the rows K and V of the chunk, or with a past from the device's KV
        cache [Hkv, 2, C, Dh] (the past's positions and the chunk's, the host wrote)."""
        if past:
            start = (2 * h + kind) * shape[2] * dim
            return tap(shape, start, [rounds, keys, BLOCK, dim], [0, BLOCK * dim, dim, 1])
        return tap(shape, h * dim, [rounds, keys, BLOCK, dim], [0, BLOCK * kv_row, kv_row, 1])

    phases = range(kv_heads)
    q, o = args[0].shape, args[-1].shape
    k, v = (args[1].shape,) * 2 if past else (args[1].shape, args[2].shape)
    k_arg, v_arg, o_arg = (1, 1, 2) if past else (1, 2, 3)
    streams = [
        *(Stream(0, q_in[c].prod(tile=shim_tile(lib, c)), [query_tap(q, c, h) for h in phases])
          for c in range(columns)),
        Stream(k_arg, k_in.prod(tile=shim_tile(lib, 0)), [kv_tap(k, h, 0) for h in phases]),
        Stream(v_arg, v_in.prod(tile=shim_tile(lib, 1)), [kv_tap(v, h, 1) for h in phases]),
        *(Stream(o_arg, o_out[c].cons(tile=shim_tile(lib, c)),
                 [query_tap(o, c, h) for h in phases], drain=True) for c in range(columns)),
    ]  # fmt: skip
    return stream_program(args, streams, workers)


def params(
    heads: int, kv_heads: int, head_dim: int, s: int, past: int = 0
) -> dict[str, int | bool]:
    """Causal attention of `s` queries at positions past .. past + s - 1 over every
    position up to theirs (`past` > 0: a chunk of a longer prompt, its keys and values
    read from the KV cache): the query heads of one KV group over core rows,
    successive query blocks over columns (core rows divide the group, whole groups
    per round, whole rounds per KV head); with one query head per KV head (MHA),
    successive query blocks over the core rows too, so the whole array works."""
    group, blocks = heads // kv_heads, s // block(head_dim)
    core_rows = largest_divisor(group if group > 1 else blocks, CORE_ROWS)
    fits = [c for c in range(1, COLUMNS + 1) if (c * core_rows) % group == 0
            and blocks % (c * core_rows // group) == 0]  # fmt: skip
    return {"S": s, "past": past, "heads": heads, "kv_heads": kv_heads,
            "head_dim": head_dim, "causal": True, **cores(max(fits), core_rows)}  # fmt: skip


# -- what the time model counts (aiebuild/array/kernel_counts.py) -------------------------
def count_args(symbol: str, args: list[Any]) -> list[Any]:
    """A step is counted on a key block below the causal diagonal that is not the
    query block's first (the full work: every key group, the rescale); the state of a
    recorded call starts at a diagonal or above-diagonal block."""
    if not symbol.startswith("flash_attn_step_"):
        return args
    state = np.array(args[1], np.float32)
    counters = state[-5:].view(np.int32)
    counters[0], counters[1] = 1, 2  # key block 1 of query block 2
    return [args[0], state, *args[2:]]


def visible_share(launch: Launch) -> float:
    """Share of a core's streamed key blocks at or below the diagonal of some core of
    its round: round r's cores hold query blocks past + r*step .. past + (r+1)*step - 1,
    so the round works on its first past + (r+1)*step key blocks of past + blocks
    (288 / 512 at 2048 with no past: 8 rounds of 8 over 64 blocks)."""
    p = launch.params
    columns, rows = array(launch)
    rows_per_block = block(p["head_dim"])
    group, blocks = p["heads"] // p["kv_heads"], p["S"] // rows_per_block
    past = p["past"] // rows_per_block
    step = columns * rows // group
    rounds = blocks // step
    return sum(past + (r + 1) * step for r in range(rounds)) / (rounds * (past + blocks))


def idle_share(launch: Launch, symbol: str) -> float:
    """The K/V stream is one broadcast to every core, so cores move in lockstep: a step
    does no work on any core only above the diagonal of the round's last query block."""
    return 1.0 - visible_share(launch) if symbol.startswith("flash_attn_step_") else 0.0


SOFTMAX_FLOPS_PER_SCORE = 5  # scale, subtract the max, exp, accumulate, normalize


def flops(launch: Launch, args: list[ArgSpec]) -> int:
    """Q K^T and P V over the visible query-key pairs (4 Dh per pair and head), plus
    the softmax per score."""
    p = launch.params
    pairs = p["S"] * (p["S"] + 1) // 2 if p["causal"] else p["S"] * p["S"]
    pairs += p["S"] * p["past"]  # every query sees the whole past
    return p["heads"] * pairs * (4 * p["head_dim"] + SOFTMAX_FLOPS_PER_SCORE)


OP = Op("flash_attn", design, kernel, flops, count_args=count_args, idle_share=idle_share)
