"""One decode step's grouped-query attention over the KV cache in device memory
(aierun/ops/decode_attn.py, kernels_src/decode_attn.cc).

One core per KV head and column (core row 0; a column takes kv_heads / columns heads in
turn): it holds the head's group of query heads together and folds every key block of
the compiled context C into an online softmax (bf16 operands, fp32 accumulation and
softmax). Per column c:
- shim c's first input channel streams, per KV head, its group's query rows and the
  length (the host-written `query` operand, aierun/ops/decode_attn.py) as one object
  that stays for the head's whole key walk (depth 1);
- its second streams the head's [K; V] key blocks straight from the cache
  [Hkv, 2, C, Dh] (one 4-d pattern per block run: K and V of a block are one object,
  so the core's second input channel takes both);
- its output channel drains the group's bf16 rows to their place in attn_out.

The length is a runtime value read from the query object: IRON's runtime parameters
(mlir-aie python/iron/buffer.py, Buffer(use_write_rtp=True): a core-local buffer the
runtime sequence writes, aiex.npu.rtp_write) take their value from the instruction
stream, which is fixed per ELF, and so are the sequence's DMA sizes; a host-written
operand is what changes per call without rewriting instructions. So the DMAs move a
fixed number of positions every step (`walk`: the whole compiled context, or the first
positions of it for the decode ELFs of a generation's early steps, which the runtime
picks by position) and the kernel skips the blocks past the length: the time model
prices a step at its ELF's walk.

Core memory at Dh 64 (BK 64), G 4: [K; V] 2 x 16 KiB, queries 2 x 1.1 KiB, out 2 x 0.5
KiB, state 1.5 KiB = 36.8 KiB of 64."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiebuild.array.geometry import COLUMNS, largest_divisor
from aiebuild.ops import flash_attn
from aiebuild.ops.common import (
    SHIM_ITERATIONS,
    KernelObject,
    Op,
    Stream,
    array,
    contiguous,
    core_tile,
    iron,
    kernel_object,
    shim_tile,
    state_buffer,
    stream_program,
    tap,
    tensor,
    tiles,
)
from aierun.abi import BF16, ArgSpec, Launch

KV_OBJECT_BYTES = 16 * 1024  # one [K; V] block: depth 2 of it is half a core's memory
F32 = np.dtype(np.float32)


def block_keys(head_dim: int) -> int:
    """Keys per block: as many as fit one [K; V] object of KV_OBJECT_BYTES."""
    return KV_OBJECT_BYTES // (2 * head_dim * BF16.itemsize)


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    p = launch.params
    return kernel_object(
        "decode_attn.cc",
        {"DH": p["head_dim"], "G": p["heads"] // p["kv_heads"], "BK": block_keys(p["head_dim"])},
    )


def state_words(launch: Launch) -> int:
    """decode_attn.cc's State: bf16 queries [G*Dh] (two a word) | acc [G*Dh] | max [G] |
    sum [G] | key block, length."""
    group = launch.params["heads"] // launch.params["kv_heads"]
    rows = group * launch.params["head_dim"]
    return rows // 2 + rows + 2 * group + 2


def _runs(blocks: int) -> list[tuple[int, int]]:
    """(first block, blocks) of each phase of one head's key walk: a shim pattern's
    outermost dimension repeats at most SHIM_ITERATIONS times."""
    return [(b, min(SHIM_ITERATIONS, blocks - b)) for b in range(0, blocks, SHIM_ITERATIONS)]


def design(launch: Launch, args: list[ArgSpec]) -> Any:
    lib = iron()
    range_ = lib.range_
    p = launch.params
    kv_heads, dim, context = p["kv_heads"], p["head_dim"], p["context"]
    group, keys = p["heads"] // kv_heads, block_keys(dim)
    columns, _ = array(launch)
    walk = p.get("walk", context)  # the positions streamed: the cache's first ones
    per_column, blocks = kv_heads // columns, tiles(walk, keys, "the decode walk")
    query, cache, out = args
    row = query.shape[1]
    query_ty, kv_ty = tensor((row,), F32), tensor((2 * keys * dim,), BF16)
    out_ty, state_ty = tensor((group * dim,), BF16), tensor((state_words(launch),), F32)
    suffix, obj = f"{dim}_{group}x{keys}", kernel(launch, args).name
    start = lib.Kernel(f"decode_attn_init_{suffix}", obj, [query_ty, state_ty])
    fold = lib.Kernel(f"decode_attn_step_{suffix}", obj, [query_ty, kv_ty, state_ty])
    finish = lib.Kernel(f"decode_attn_finish_{suffix}", obj, [state_ty, out_ty])

    def core(q, kv, o, state, start_fn, fold_fn, finish_fn):
        for _ in range_(per_column):  # the column's KV heads, in turn
            queries = q.acquire(1)
            start_fn(queries, state)
            for _ in range_(blocks):
                keys_values = kv.acquire(1)
                fold_fn(queries, keys_values, state)
                kv.release(1)
            q.release(1)
            result = o.acquire(1)
            finish_fn(state, result)
            o.release(1)

    runs = _runs(blocks)
    streams, workers = [], []
    for c in range(columns):
        q_in = lib.ObjectFifo(query_ty, depth=1, name=f"q{c}")
        kv_in = lib.ObjectFifo(kv_ty, name=f"kv{c}")
        o_out = lib.ObjectFifo(out_ty, name=f"o{c}")
        fills, walks, drains = [], [], []
        for h in range(c * per_column, (c + 1) * per_column):
            for first, count in runs:
                fills.append(contiguous(query.shape, h * row, row) if first == 0 else None)
                walks.append(tap(cache.shape, 2 * h * context * dim + first * keys * dim,
                                 [count, 2, keys, dim],
                                 [keys * dim, context * dim, dim, 1]))  # fmt: skip
                last = first + count == blocks
                drains.append(contiguous(out.shape, h * group * dim, group * dim) if last else None)
        streams += [Stream(0, q_in.prod(tile=shim_tile(lib, c)), fills),
                    Stream(1, kv_in.prod(tile=shim_tile(lib, c)), walks),
                    Stream(2, o_out.cons(tile=shim_tile(lib, c)), drains, drain=True)]  # fmt: skip
        state = state_buffer(lib, f"state_{c}", np.zeros(state_words(launch), F32))
        handles = [q_in.cons(), kv_in.cons(), o_out.prod(), state, start, fold, finish]
        workers.append(lib.Worker(core, handles, tile=core_tile(lib, c, 0)))
    return stream_program(args, streams, workers)


def params(
    heads: int, kv_heads: int, head_dim: int, context: int, walk: int | None = None
) -> dict[str, int]:
    """Attention of one query position over a KV cache of `context` positions, of which
    it streams the first `walk` (all by default; a multiple of the key block): KV heads
    over the columns (as many as divide them), one core each."""
    extra = {} if walk is None or walk == context else {"walk": walk}
    return {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "context": context,
            "columns": largest_divisor(kv_heads, COLUMNS), "core_rows": 1, **extra}  # fmt: skip


# -- what the time model counts (aiebuild/array/kernel_counts.py) -------------------------
def count_args(symbol: str, args: list[Any]) -> list[Any]:
    """A step is counted on a whole block after the first (every key attended, the
    rescale taken): the recorded state's length of 0 would skip it."""
    if not symbol.startswith("decode_attn_step_"):
        return args
    state = np.array(args[2], np.float32)
    state[-2:].view(np.int32)[:] = (1, np.iinfo(np.int32).max)
    return [*args[:2], state]


def flops(launch: Launch, args: list[ArgSpec]) -> int:
    """q.k and p v over every position of the context (4 Dh per position and head),
    plus the softmax per score (flash_attn's count)."""
    p = launch.params
    return p["heads"] * p["context"] * (4 * p["head_dim"] + flash_attn.SOFTMAX_FLOPS_PER_SCORE)


OP = Op("decode_attn", design, kernel, flops, count_args=count_args)
