"""The runtime's host ops against the seed's way (seed_way.py), side by side in this
process, at one model shape and several contexts (prompt length = bucket = context:
the same padded length for both, so that the ops are compared like for like).

Ours are the functions the pipeline calls; the device's outputs they read are random
arrays of the ABI's shapes and dtypes, and the first layer's input buffer is a touched
fp32 array, as a device buffer made at prepare is. Our prefill ELF writes K/V as the
KV cache itself (the kv_store launch: fp32, per KV head), so our kv_cache_extract
only keeps views of them; what that launch adds on the NPU is the time model's
(`kv_store_modeled_ms`), reported beside the host ops. Each repetition times ours and then
the seed's way, so both see the same machine; the medians of the thread's CPU time
are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from aiebuild.specs import kv_cache_shape
from aierun.abi import BF16, ArgSpec, Role
from aierun.devices.emu import EmuDevice
from aierun.host.embedding import EmbeddingTable, pad_prompt
from aierun.host.kv_cache import KVCache
from aierun.host.norm import final_norm
from aierun.model import ModelShape
from aierun.ops.decode_attn import PAD, query_rows
from aierun.ops.kv_store import per_head
from tools.bench import seed_way

PAD_ID = 128001
SEED_DECODE_TOKENS = 32  # the seed sizes its cache for the prompt plus the tokens to generate


def elapsed_ms(op: Callable[..., object], *args: object) -> float:
    """The CPU time this thread spends in `op` (user and system, page faults included).
    Every op here, ours and the seed's, runs on this one thread, so on an idle machine
    this is its wall time; on a shared one it leaves out the slices another process
    took from it, which a wall clock would charge to whichever op was running."""
    start = time.thread_time_ns()
    op(*args)
    return (time.thread_time_ns() - start) / 1e6


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, BF16)
    for start in range(0, shape[0], 8192):  # a block at a time: no fp32 copy of it all
        block = out[start : start + 8192]
        block[...] = rng.standard_normal(block.shape, dtype=np.float32)
    return out


class Inputs:
    """What the device would hand the host at one context: random, fixed per context."""

    def __init__(self, shape: ModelShape, context: int, rng: np.random.Generator):
        kv, e = shape.kv_dim, shape.hidden
        self.ids = rng.integers(0, shape.vocab, context).tolist()
        self.k = [random_bf16(rng, (context, kv)) for _ in range(shape.n_layers)]
        self.v = [random_bf16(rng, (context, kv)) for _ in range(shape.n_layers)]
        # Ours: what the prefill ELF's kv_store launch writes, the same K/V widened to
        # fp32 per KV head.
        self.k_cache = [self.device_cache(shape, k) for k in self.k]
        self.v_cache = [self.device_cache(shape, v) for v in self.v]
        self.hidden = rng.standard_normal((context, e), dtype=np.float32)  # ours: fp32 residual
        self.hidden_bf16 = self.hidden.astype(BF16)  # the seed's: bf16 activations
        self.q = random_bf16(rng, (1, shape.q_dim))
        self.k_row, self.v_row = random_bf16(rng, (1, kv)), random_bf16(rng, (1, kv))

    @staticmethod
    def device_cache(shape: ModelShape, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(per_head(rows, shape.n_kv_heads), dtype=np.float32)


def prefill_ours(shape, table, inputs, kv, x, norm) -> dict[str, float]:
    n, times = len(inputs.ids), {}
    padded = None

    def pad():
        nonlocal padded
        padded = pad_prompt(inputs.ids, n, PAD_ID)

    times["eos_pad"] = elapsed_ms(pad)
    times["embed_lookup"] = elapsed_ms(lambda: table.lookup(padded, x))
    extract = [
        elapsed_ms(
            lambda layer=layer: kv.keep_prompt(
                layer, inputs.k_cache[layer], inputs.v_cache[layer], n
            )
        )
        for layer in range(shape.n_layers)
    ]
    times["kv_cache_extract"] = statistics.median(extract)
    last = inputs.hidden[n - 1 : n]
    times["final_rms_norm"] = elapsed_ms(lambda: final_norm(last, norm, shape.rms_eps))
    return times


def prefill_seed(shape, table, inputs, norm) -> tuple[dict[str, float], tuple]:
    n, times = len(inputs.ids), {}
    caches = tuple(
        seed_way.new_kv_cache(
            shape.n_layers, shape.n_kv_heads, n + SEED_DECODE_TOKENS, shape.head_dim
        )
        for _ in range(2)
    )
    padded = None

    def pad():
        nonlocal padded
        padded = seed_way.eos_pad(inputs.ids, n, PAD_ID)

    times["eos_pad"] = elapsed_ms(pad)
    times["embed_lookup"] = elapsed_ms(lambda: seed_way.embed_lookup(table, padded))
    extract = [
        elapsed_ms(
            lambda layer=layer: seed_way.kv_cache_extract(
                *caches, layer, inputs.k[layer], inputs.v[layer]
            )
        )
        for layer in range(shape.n_layers)
    ]
    times["kv_cache_extract"] = statistics.median(extract)
    times["final_rms_norm"] = elapsed_ms(
        lambda: seed_way.final_rms_norm(inputs.hidden_bf16, n - 1, norm, shape.rms_eps)
    )
    return times, caches


def decode_ours_seed(shape, kv, caches, inputs, context: int) -> list[tuple[float, float]]:
    """The host's work between a layer's two decode ELFs at position `context`: ours
    appends the K/V to the device's cache and writes the attention's query rows (the
    attention runs on the device), the seed's way attends on the host; ms each."""
    q, k, v = inputs.q, inputs.k_row, inputs.v_row
    group = shape.n_heads // shape.n_kv_heads
    rows = np.zeros((shape.n_kv_heads, group * shape.head_dim + PAD), np.float32)

    def append(layer: int) -> None:
        kv.store(layer, context, k, v)
        query_rows(q, shape.n_kv_heads, context + 1, rows)

    pairs = []
    for layer in range(shape.n_layers):
        ours = elapsed_ms(append, layer)
        seed = elapsed_ms(
            seed_way.decode_attention,
            caches[0][layer], caches[1][layer], context, q[0], k[0], v[0], shape.n_heads,
        )  # fmt: skip
        pairs.append((ours, seed))
    return pairs


def measure_context(shape, table_bf16, ours_table, norm, context, reps, rng) -> list[dict]:
    inputs = Inputs(shape, context, rng)
    arg = ArgSpec("kv_cache", kv_cache_shape(shape, context + 1), "f32", Role.INPUT)
    kv = KVCache.allocate(EmuDevice(), arg, shape.n_layers)
    x = np.zeros((context, shape.hidden), np.float32)
    samples: dict[str, list[tuple[float, float]]] = {}
    for _ in range(reps):
        ours = prefill_ours(shape, ours_table, inputs, kv, x, norm)
        seeds, caches = prefill_seed(shape, table_bf16, inputs, norm)
        for op in ours:
            samples.setdefault(op, []).append((ours[op], seeds[op]))
        samples.setdefault("kv_append", []).extend(
            decode_ours_seed(shape, kv, caches, inputs, context)
        )
    medians = {
        op: tuple(statistics.median(pair[side] for pair in pairs) for side in (0, 1))
        for op, pairs in samples.items()
    }
    medians["all"] = tuple(prefill_in_all(shape, medians, side) for side in (0, 1))
    return [
        {"op": op, "context": context, "ours_ms": ours, "seed_ms": seed, "ratio": ours / seed}
        for op, (ours, seed) in medians.items()
    ]


def prefill_in_all(shape: ModelShape, medians: dict, side: int) -> float:
    """The prefill's host ops without tokenize, from the medians: on a shared machine a
    sum per repetition would mostly measure which of its 19 ops another process
    preempted."""
    once = ("eos_pad", "embed_lookup", "final_rms_norm")
    return (
        sum(medians[op][side] for op in once) + shape.n_layers * medians["kv_cache_extract"][side]
    )


def measure(shape: ModelShape, contexts: tuple[int, ...], reps: int, seed: int = 0) -> list[dict]:
    """Rows {op, context, ours_ms, seed_ms, ratio} for every op and context; an op
    "all" is the prefill host ops together (without tokenize)."""
    rng = np.random.default_rng(seed)
    table_bf16 = random_bf16(rng, (shape.vocab, shape.hidden))
    ours_table = EmbeddingTable(table_bf16)
    norm = (1 + 0.05 * rng.standard_normal(shape.hidden)).astype(np.float32)
    return [
        row
        for context in contexts
        for row in measure_context(shape, table_bf16, ours_table, norm, context, reps, rng)
    ]


def kv_store_modeled_ms(shape: ModelShape, context: int) -> float:
    """What the kv_store launch adds to a prefill layer on npu2, per the time model
    (aiebuild/array/timing.py): its busiest resource, and the reconfiguration before it."""
    from aiebuild import placed, specs

    elf = placed.elf_time(specs.rms_gemms_rope(shape, context))
    (store,) = [t for t in elf.launches if t.label == "KV cache"]
    return (store.seconds + store.reconfigure_s) * 1e3
