"""GGUF block-quantized weights (Q4_0, Q4_1, Q8_0) as the device keeps them, and the
GEMV that reads them (kernels_src/gemv.cc with AIEK_WFMT != 0).

A GGUF block is 32 consecutive values of a row: q4_0 d*(q-8), q4_1 d*q+m, q8_0 d*q,
with d and m fp16 and q a small integer. At preload the blocks are repacked into the
device layout `tiles<TN>x<TK>`: for each TN-row block of w and each TK-column step of
the GEMV (aiebuild/ops/gemv.py), one contiguous record that the step's core reads as
whole 512-B shim bursts:

    quants [TN][TK * bits / 8]   row by row, nibbles in aie_api's int4 order (lane 2i
                                 in the low nibble of byte i, 2i+1 in the high one);
                                 q4_0 stores q-8 as signed int4, q4_1 q as uint4,
                                 q8_0 q as int8
    d      [TN][TK / 32] fp32    the block scales, widened exactly from fp16 (the core
                                 has no fp16 scalar path; +2 B per block)
    m      [TN][TK / 32] fp32    q4_1 only: the block minimums

Arithmetic (kernel and emulation alike, bit for bit): per row, 32 fp32 lane sums; a
block adds, lane by lane, fl(d * fl(x * q)) and for q4_1 then fl(m * x), where x is the
bf16 activation. x * q is exact in fp32 (8 + 8 significant bits at most), d * (x * q)
is exact too for 4-bit q (11 + 12 bits); only the lane additions (and q8_0's scale
product) round. A row's lanes are reduced pairwise (fact S) once, as the bf16 GEMV.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from aierun.abi import split_layout
from aierun.errors import UserError
from aierun.ops.numerics import to_bf16

BLOCK = 32  # values per GGUF block


@dataclass(frozen=True)
class QType:
    bits: int  # per quant on the device
    gguf_block_bytes: int
    scales: int  # fp32 values per block on the device: d, or d and m

    @property
    def device_block_bytes(self) -> int:
        return BLOCK * self.bits // 8 + 4 * self.scales


QTYPES = {
    "q4_0": QType(4, 18, 1),
    "q4_1": QType(4, 20, 2),
    "q8_0": QType(8, 34, 1),
}
# The -D AIEK_WFMT code of each weight format in kernels_src/gemv.cc.
WFMT = {"bf16": 0, "q4_0": 1, "q4_1": 2, "q8_0": 3}


@dataclass(frozen=True)
class Blocks:
    """Quantized rows as values: q [N, K] int8 (q4_0 already q-8), d and m [N, K/32]
    fp32 (m None but for q4_1)."""

    q: np.ndarray
    d: np.ndarray
    m: np.ndarray | None

    @cached_property
    def block_major(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """q [K/32, N, 32], d and m [K/32, N]: the blocks in the order the emulated GEMV
        walks them, made once per weight (1 byte per value more) rather than
        transposed on every call."""
        n, k = self.q.shape
        q = np.ascontiguousarray(self.q.reshape(n, k // BLOCK, BLOCK).transpose(1, 0, 2))
        m = None if self.m is None else np.ascontiguousarray(self.m.T)
        return q, np.ascontiguousarray(self.d.T), m


def qtype(name: str) -> QType:
    if name not in QTYPES:
        raise UserError(f"weight type {name!r} is not one the NPU kernels read "
                        f"({', '.join(QTYPES)} or bf16)")  # fmt: skip
    return QTYPES[name]


def device_row_bytes(name: str, k: int) -> int:
    """Bytes of one row of K values in the device layout."""
    return k // BLOCK * qtype(name).device_block_bytes


def layout(tn: int, tk: int) -> str:
    """The ArgSpec layout of a quantized weight tiled for TN x TK GEMV steps."""
    return f"tiles{tn}x{tk}"


def parse_layout(name: str) -> tuple[int, int]:
    """(TN, TK) of a tiled layout, also inside an interleaved one (aierun/abi.py): its
    records then hold whichever rows the interleaving put in each TN-row block."""
    tn, tk = split_layout(name)[1].removeprefix("tiles").split("x")
    return int(tn), int(tk)


def from_gguf(blocks: np.ndarray, name: str) -> Blocks:
    """GGUF block bytes [N, K/32 * block bytes] (uint8) as values."""
    rows = blocks.reshape(blocks.shape[0], -1, qtype(name).gguf_block_bytes)
    d = rows[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if name == "q8_0":
        q = rows[..., 2:].copy().view(np.int8)
        return Blocks(q.reshape(len(rows), -1), d, None)
    start = 4 if name == "q4_1" else 2
    packed = rows[..., start:]  # value j in the low nibble of byte j, j + 16 in the high
    q = np.concatenate([packed & 15, packed >> 4], axis=-1).astype(np.int8)
    m = rows[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    if name == "q4_0":
        q -= 8
    return Blocks(q.reshape(len(rows), -1), d, m if name == "q4_1" else None)


def to_device(blocks: np.ndarray, name: str, tn: int, tk: int) -> np.ndarray:
    """GGUF block bytes [N, ...] repacked into the device layout [N, device_row_bytes]."""
    values = from_gguf(blocks, name)
    n, k = values.q.shape
    steps = (n // tn, tn, k // tk)
    quants = values.q.reshape(*steps, tk).transpose(0, 2, 1, 3)  # [N/TN, K/TK, TN, TK]
    if qtype(name).bits == 4:
        nibbles = quants.view(np.uint8) & 15
        quants = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
    parts = [quants.view(np.uint8).reshape(*steps[::2], -1)]
    for scale in (values.d, values.m):
        if scale is not None:
            tiles = scale.reshape(*steps, tk // BLOCK).transpose(0, 2, 1, 3)
            parts.append(np.ascontiguousarray(tiles).view(np.uint8).reshape(*steps[::2], -1))
    return np.concatenate(parts, axis=-1).reshape(n, -1)


def from_device(data: np.ndarray, name: str, tn: int, tk: int) -> Blocks:
    """The device layout [N, device_row_bytes] back as values."""
    kind = qtype(name)
    n = data.shape[0]
    k = data.shape[1] // kind.device_block_bytes * BLOCK
    records = data.reshape(n // tn, k // tk, -1)
    quant_bytes = tn * tk * kind.bits // 8
    raw = records[..., :quant_bytes].reshape(n // tn, k // tk, tn, -1)
    if kind.bits == 4:
        low, high = raw & 15, raw >> 4
        nibbles = np.stack([low, high], axis=-1).reshape(*raw.shape[:3], tk).astype(np.int8)
        # q4_0's nibbles are signed int4: (n ^ 8) - 8 sign-extends them, in int8
        # (a bool mask times 16 would widen the whole weight to int64)
        q = (nibbles ^ np.int8(8)) - np.int8(8) if name == "q4_0" else nibbles
    else:
        q = raw.view(np.int8)
    q = q.transpose(0, 2, 1, 3).reshape(n, k)
    scales = records[..., quant_bytes:].copy().view(np.float32)
    scales = scales.reshape(n // tn, k // tk, kind.scales, tn, tk // BLOCK)
    per_row = scales.transpose(2, 0, 3, 1, 4).reshape(kind.scales, n, k // BLOCK)
    return Blocks(np.ascontiguousarray(q), per_row[0], per_row[1] if kind.scales == 2 else None)


def dequantized(values: Blocks) -> np.ndarray:
    """The exact block values as fp32 [N, K] (the reference the GEMV's sums approach)."""
    n, k = values.q.shape
    q = values.q.reshape(n, -1, BLOCK).astype(np.float32)
    w = values.d[..., None] * q
    if values.m is not None:
        w += values.m[..., None]
    return w.reshape(n, k)


def gemv(x: np.ndarray, values: Blocks) -> np.ndarray:
    """y = w @ x for one bf16 row x [K], in the kernel's order: fp32 lane sums over the
    blocks, then the pairwise lane reduction (fact S)."""
    xs = to_bf16(np.asarray(x, np.float32).reshape(-1)).reshape(-1, BLOCK)
    blocks = values.block_major
    lanes = np.empty((values.q.shape[0], BLOCK), np.float32)
    for start in range(0, len(lanes), GEMV_ROWS):
        rows = slice(start, start + GEMV_ROWS)
        lanes[rows] = _lane_sums(*(None if a is None else a[:, rows] for a in blocks), xs)
    while lanes.shape[1] > 1:
        half = lanes.shape[1] // 2
        lanes = lanes[:, :half] + lanes[:, half:]
    return lanes[:, 0]


# Rows per batch of the emulated GEMV: its fp32 temporaries (~1 MB) stay in the cache.
GEMV_ROWS = 512


def _lane_sums(q: np.ndarray, d: np.ndarray, m: np.ndarray | None, xs: np.ndarray) -> np.ndarray:
    """The 32 lane sums of some rows from their blocks, block-major ([blocks, rows, 32]
    quants, [blocks, rows] scales and minimums). Every block's terms at once (each an
    elementwise fp32 product, as the kernel computes it); only their sums follow the
    kernel's order, block after block."""
    terms = q.astype(np.float32)
    terms *= xs[:, None, :]
    terms *= d[..., None]
    offsets = None if m is None else m[..., None] * xs[:, None, :]
    lanes = np.zeros(terms.shape[1:], np.float32)
    for b in range(len(terms)):
        lanes += terms[b]
        if offsets is not None:
            lanes += offsets[b]
    return lanes


def quantized_weight(
    blocks: np.ndarray, name: str, layout_name: str, shape: tuple[int, ...]
) -> np.ndarray:
    """A weight argument's bytes from the checkpoint's GGUF blocks [rows, bytes]: rows
    zero-padded to the argument's (an LM head's whole partitions; zero bytes are
    blocks of d = 0, values 0), then in the device layout, shaped as the argument."""
    tn, tk = parse_layout(layout_name)
    rows = int(np.prod(shape[:-1]))
    padded = np.zeros((rows, blocks.shape[1]), np.uint8)
    padded[: len(blocks)] = blocks
    return to_device(padded, name, tn, tk).reshape(shape)
