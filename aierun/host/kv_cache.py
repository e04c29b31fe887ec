"""The host's side of decode attention: the K/V cache decode reads, and one decode
step's attention over it (the CPU op `decode_attention`)."""

from __future__ import annotations

from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

from aierun.ops.numerics import to_bf16


class KVCache:
    """The K/V of every layer that decode attention reads, per KV head.

    Each layer's positions come in two parts, both fp32 laid out [Hkv, positions, Dh]:
    one head's keys and values are each one contiguous matrix, of the type numpy's
    BLAS multiplies. The prompt's positions stay where the prefill ELF wrote them
    (its `kv_store` launch widens them and places each head's rows): `keep_prompt`
    takes views of those device buffers, nothing is copied or converted. The
    positions decode appends after the prompt go to a host array of the same layout
    (`store`), widened once as they are stored. Every array is touched when
    allocated, so no call faults its pages in."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int):
        self.prompt: list[tuple[np.ndarray, np.ndarray] | None] = [None] * layers
        self.prompt_length = 0
        self.appended = _touched((2, layers, kv_heads, capacity, head_dim))

    @property
    def capacity(self) -> int:
        """Positions (the prompt's and appended ones) it holds before it must grow."""
        return self.prompt_length + self.appended.shape[3]

    def grow(self, capacity: int) -> None:
        """Hold `capacity` positions, keeping what was appended."""
        if capacity <= self.capacity:
            return
        old = self.appended
        kinds, layers, heads, room, dim = old.shape
        room += capacity - self.capacity
        self.appended = _touched((kinds, layers, heads, room, dim))
        self.appended[..., : old.shape[3], :] = old

    def keep_prompt(self, layer: int, k: np.ndarray, v: np.ndarray, length: int) -> None:
        """The prompt's positions [0, length) of `layer`: views k, v [Hkv, >= length, Dh]
        (the device's cache buffers), kept as they are. Positions stored after them
        (`store`) are appended."""
        self.prompt[layer] = (k, v)
        self.prompt_length = length

    def truncate(self, length: int) -> None:
        """Keep positions [0, length) only (a cached prefix a new prompt shares). Inside
        the prompt this only shortens it: the views stay, and positions after `length`
        go to the host array. Nothing is erased: every later position is stored
        before it is attended to."""
        self.prompt_length = min(self.prompt_length, length)

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Positions [start, start + len(k)) after the prompt, from rows shaped
        [rows, Hkv*Dh] (the decode ELF's outputs)."""
        first = start - self.prompt_length
        if first < 0:
            raise ValueError(f"position {start} is inside the prompt ({self.prompt_length})")
        self.grow(start + len(k))
        _, _, heads, _, dim = self.appended.shape
        for kind, rows in enumerate((k, v)):
            target = self.appended[kind, layer, :, first : first + len(rows)]
            np.copyto(target, rows.reshape(len(rows), heads, dim).swapaxes(0, 1))

    def parts(self, layer: int, length: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Positions [0, length) of `layer`, as (keys, values) [Hkv, L_i, Dh] per part."""
        prompt = min(self.prompt_length, length)
        found = []
        if prompt:
            keys, values = self.prompt[layer]
            found.append((keys[:, :prompt], values[:, :prompt]))
        if length > prompt:
            rows = slice(0, length - prompt)
            found.append((self.appended[0, layer, :, rows], self.appended[1, layer, :, rows]))
        return found

    def detached(self, length: int) -> KVCache:
        """A copy of positions [0, length) that owns its memory (no views of device
        buffers, which the next prefill overwrites): a cached prefix kept aside."""
        layers, (_, _, heads, _, dim) = len(self.prompt), self.appended.shape
        copy = KVCache(layers, heads, dim, length)
        for layer in range(layers):
            start = 0
            for keys, values in self.parts(layer, length):
                stop = start + keys.shape[1]
                copy.appended[0, layer, :, start:stop] = keys
                copy.appended[1, layer, :, start:stop] = values
                start = stop
        return copy

    @property
    def nbytes(self) -> int:
        """Host memory it owns (the prompt's device buffers are not counted)."""
        return self.appended.nbytes

    def attend(self, layer: int, q: np.ndarray, length: int) -> np.ndarray:
        """One query row q [1, H*Dh] against positions [0, length) -> fp32 [1, H*Dh].

        The exact softmax in fp32 (numpy's exp): this runs on the host CPU, whose
        arithmetic is fp32, not on the NPU. On one BLAS thread: these GEMMs are small,
        and handing half of one to a second thread costs more than it saves (on a busy
        machine, a whole scheduler time slice while that thread waits for a core)."""
        with _blas().limit(limits=1, user_api="blas"):
            return self._attend(layer, q, length)

    def _attend(self, layer: int, q: np.ndarray, length: int) -> np.ndarray:
        parts = self.parts(layer, length)
        kv_heads, _, dim = parts[0][0].shape
        group = q.shape[-1] // (kv_heads * dim)
        queries = q.reshape(kv_heads, group, dim).astype(np.float32)  # [Hkv, G, Dh]
        scores = np.empty((kv_heads, group, length), np.float32)  # C order: rows reduce fast
        start = 0
        for keys, _ in parts:
            stop = start + keys.shape[1]
            # A group's query heads in one GEMM per KV head, its keys the untransposed
            # left operand (3x faster than queries @ keys^T: BLAS packs the keys first).
            scores[..., start:stop] = (keys @ queries.transpose(0, 2, 1)).transpose(0, 2, 1)
            start = stop
        scores *= np.float32(1.0 / np.sqrt(dim))
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        out = np.zeros((kv_heads, group, dim), np.float32)
        start = 0
        for _, values in parts:
            stop = start + values.shape[1]
            out += scores[..., start:stop] @ values
            start = stop
        out /= scores.sum(axis=-1, keepdims=True)
        return out.reshape(1, kv_heads * group * dim)


def _touched(shape: tuple[int, ...]) -> np.ndarray:
    """Zeros whose pages are already mapped: np.zeros maps them lazily, so every later
    store into a new page (one per head and position) would take a page fault."""
    array = np.empty(shape, np.float32)
    array.fill(0)
    return array


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def decode_attention(
    kv: KVCache, layer: int, pos: int, q: np.ndarray, k: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Append position `pos`'s K/V [1, Hkv*Dh] to the cache, then attend its query
    [1, H*Dh] to positions [0, pos]; the bf16 input of the O projection."""
    kv.store(layer, pos, k, v)
    return to_bf16(kv.attend(layer, q, pos + 1))
