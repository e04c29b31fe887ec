"""The kernels of kernels_src/ compiled for this machine (aiebuild/sim/host_kernels.py,
against the host aie_api in kernels_src/host/) against their emulation in aierun/ops.

Each entry point runs at small shapes, called the way its design calls it. Where the
kernel and the emulation do the same arithmetic the results are bit-exact; where the
summation order or the softmax differs, the comment says why and the difference is
bounded. Mutated kernels (a wrong loop bound, a leaking causal mask, a forgotten
rounding mode) must be caught by the same checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiebuild.ops import flash_attn as flash_attn_design
from aiebuild.ops import gemm, gemv
from aiebuild.ops.common import KERNELS_SRC, KernelObject, kernel_object
from aiebuild.ops.flash_attn import block
from aiebuild.sim import host_kernels
from aiebuild.sim.dataflow import stream_order
from aiebuild.sim.host_kernels import (
    HostCompileError,
    HostKernel,
    build_library,
    host_kernel,
    load_kernels,
)
from aierun.abi import BF16
from aierun.errors import UserError
from aierun.ops import OPS
from aierun.ops.numerics import to_bf16, to_bfp16

RNG = np.random.default_rng(7)


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("host-kernels")


@pytest.fixture(scope="session")
def build(home):
    """Load an object, compiling it unless this session already did (the store and the
    loader cache it). The objects the tests below use are compiled up front, in
    parallel."""
    load_kernels(OBJECTS, home)
    return lambda obj: host_kernel(obj, home)


def bf16_randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return to_bf16(RNG.standard_normal(shape).astype(np.float32) * scale)


def f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in bf16 units in the last place (0 for +0 vs -0)."""

    def ordered(x: np.ndarray) -> np.ndarray:
        bits = x.view(np.uint16).astype(np.int32)
        return np.where(bits & 0x8000, 0x8000 - bits, bits)

    return np.abs(ordered(a) - ordered(b))


def assert_bit_exact(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.dtype == expected.dtype
    np.testing.assert_array_equal(ours.view(np.uint8), expected.view(np.uint8))


def mutant(tmp_path: Path, source: str, old: str, new: str) -> Path:
    """A copy of kernels_src/<source> with `old` (found exactly once) replaced."""
    text = (KERNELS_SRC / source).read_text()
    assert text.count(old) == 1, f"the mutation target is not unique in {source}"
    path = tmp_path / source
    path.write_text(text.replace(old, new))
    return path


# -- the objects under test (the designs' tile sizes, small rows) ------------------------
CHUNK = 64
ADD_TYPES = [(False, False, False), (True, False, True)]  # bf16 + bf16, residual fp32 + bf16
GEMM = {"TM": 32, "TK": 64, "TN": 64, "MMA": "bf16"}  # aiebuild/ops/gemm.py
GEMM_BFP16 = {**GEMM, "MMA": "bfp16"}
# One bfp16 block per output: the kernel's only fp32 rounding is in the store.
GEMM_ONE_BLOCK = {"TM": 16, "TK": 8, "TN": 16, "MMA": "bfp16"}
GEMV = {"K": 1024, "TN": gemv.TN, "TK": gemv.TK_MAX}  # aiebuild/ops/gemv.py
FA = {"DH": 64, "BQ": block(64), "BK": block(64)}  # aiebuild/ops/flash_attn.py
RMSNORM = {"E": 128, "EPS": 1e-5}


def eltwise(a_f32: bool, b_f32: bool, c_f32: bool) -> KernelObject:
    flags = {"CHUNK": CHUNK, "A_F32": a_f32, "B_F32": b_f32, "C_F32": c_f32}
    return kernel_object("eltwise.cc", flags)


def rope(table_f32: bool) -> KernelObject:
    return kernel_object("rope.cc", {"HEADS": 2, "DH": 64, "TABLE_F32": table_f32})


OBJECTS = [
    *(eltwise(*types) for types in ADD_TYPES),
    *(rope(wide) for wide in (False, True)),
    *(kernel_object("rmsnorm.cc", {**RMSNORM, "X_F32": wide}) for wide in (False, True)),
    *(kernel_object("gemm.cc", flags) for flags in (GEMM, GEMM_BFP16, GEMM_ONE_BLOCK)),
    kernel_object("gemv.cc", GEMV),
    kernel_object("flash_attn.cc", FA),
]


# -- eltwise ---------------------------------------------------------------------------


def tag(wide: bool) -> str:
    return "f32" if wide else "bf16"


def check_add(kernel: HostKernel, a_f32: bool, b_f32: bool, c_f32: bool) -> None:
    """fp32 sum of the operands, rounded once when the result is bf16: bit-exact."""
    a = f32(bf16_randn(CHUNK)) * np.float32(1.3) if a_f32 else bf16_randn(CHUNK)
    b = bf16_randn(CHUNK)
    c = np.zeros(CHUNK, np.float32 if c_f32 else BF16)
    kernel.call(f"add_{tag(a_f32)}_{tag(b_f32)}_{tag(c_f32)}_{CHUNK}", a, b, c)
    (expected,) = OPS["add"]({}, f32(a), f32(b))
    assert_bit_exact(c, expected if c_f32 else to_bf16(expected))


@pytest.mark.parametrize("types", ADD_TYPES)
@pytest.mark.slow
def test_add_is_bit_exact(build, types):
    check_add(build(eltwise(*types)), *types)


def test_silu_mul_is_bit_exact(build):
    """Same arithmetic as the emulation: the bf16 exp, then g * inv(1 + e) * u in fp32
    (inv is IEEE in both). The extremes cover exp overflowing to inf (g = -90)."""
    extremes = to_bf16(np.array([0.0, -0.0, 20.0, -20.0, 88.0, -90.0], np.float32))
    gate = np.concatenate([bf16_randn(CHUNK - len(extremes), scale=4.0), extremes])
    up = bf16_randn(CHUNK)
    out = np.zeros(CHUNK, BF16)
    build(eltwise(False, False, False)).call(f"silu_mul_bf16_bf16_bf16_{CHUNK}", gate, up, out)
    (expected,) = OPS["silu_mul"]({}, f32(gate), f32(up))
    assert_bit_exact(out, to_bf16(expected))


def test_wrong_loop_bound_is_caught(build, tmp_path):
    source = mutant(
        tmp_path, "eltwise.cc", "i < AIEK_CHUNK; i += LANES)\n    store_as",
        "i < AIEK_CHUNK - LANES; i += LANES)\n    store_as",
    )  # fmt: skip
    types = ADD_TYPES[0]
    with pytest.raises(AssertionError):
        check_add(build(KernelObject(source, eltwise(*types).params)), *types)


# -- rope, rmsnorm -----------------------------------------------------------------------
@pytest.mark.parametrize("table_f32", [False, True])
def test_rope_is_bit_exact(build, table_f32):
    """x1*cos - x2*sin and x2*cos + x1*sin: products rounded to fp32, then one add, in
    the kernel (mul, then msc / mac) as in numpy."""
    heads, dim, rows = 2, 64, 3
    kernel = build(rope(table_f32))
    x = bf16_randn(rows, heads * dim)
    angles = RNG.uniform(0, 2 * np.pi, (rows, dim // 2))
    table = np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    table = table if table_f32 else to_bf16(table)
    out = np.zeros_like(x)
    for row in range(rows):  # the design calls the kernel once per row
        y = np.zeros(heads * dim, BF16)
        kernel.call(f"rope_{tag(table_f32)}_{heads}x{dim}", x[row].copy(), table[row].copy(), y)
        out[row] = y
    (expected,) = OPS["rope"]({"heads": heads, "head_dim": dim}, f32(x), f32(table))
    assert_bit_exact(out, to_bf16(expected))


@pytest.mark.parametrize("x_f32", [False, True])
def test_rmsnorm_within_one_ulp(build, x_f32):
    """The sum of squares differs in order (16 lane sums, then halving, vs numpy's
    pairwise sum): a last-bit fp32 difference, at most 1 bf16 ulp after rounding."""
    length, rows, eps = RMSNORM["E"], 4, RMSNORM["EPS"]
    kernel = build(kernel_object("rmsnorm.cc", {**RMSNORM, "X_F32": x_f32}))
    x = f32(bf16_randn(rows, length)) * np.float32(1.37) if x_f32 else bf16_randn(rows, length)
    weight = bf16_randn(length)
    out = np.zeros((rows, length), BF16)
    for row in range(rows):
        y = np.zeros(length, BF16)
        kernel.call(f"rmsnorm_{tag(x_f32)}_{length}", x[row].copy(), weight, y)
        out[row] = y
    (expected,) = OPS["rmsnorm"]({"eps": eps}, f32(x), f32(weight))
    assert ulps(out, to_bf16(expected)).max() <= 1


# -- gemm, gemv --------------------------------------------------------------------------
def gemm_blocks(tile: np.ndarray, block_rows: int) -> np.ndarray:
    """A row-major tile in the order the design's memory tile streams it to the core
    (gemm.blocked, read by the dataflow simulator's own stream_order)."""
    rows, depth = tile.shape
    order = stream_order(gemm.blocked(rows, depth, block_rows), tile.size, "gemm tile")
    return tile.reshape(-1)[order]


def run_gemm(kernel: HostKernel, flags: dict, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w^T as the design calls the kernel: per (row tile, column tile), zero, one
    mac per k tile on blocked tiles (with the bfp16 scratch), store."""
    tm, tk, tn, mma = flags["TM"], flags["TK"], flags["TN"], flags["MMA"]
    name, x_rows = f"{tm}x{tk}x{tn}_{mma}", 8 if mma == "bfp16" else 4
    scratch = [np.zeros((tm + tn) * tk // 8 * gemm.BFP16_BLOCK_BYTES, np.uint8)][: mma == "bfp16"]
    y = np.zeros((x.shape[0], w.shape[0]), BF16)
    for m in range(0, x.shape[0], tm):
        for n in range(0, w.shape[0], tn):
            acc = np.empty(tm * tn, np.float32)  # the kernel zeroes it
            kernel.call(f"gemm_zero_f32_{name}", acc)
            for k in range(0, x.shape[1], tk):
                x_tile = gemm_blocks(x[m : m + tm, k : k + tk], x_rows)
                w_tile = gemm_blocks(w[n : n + tn, k : k + tk], 8)
                kernel.call(f"gemm_mac_bf16_{name}", x_tile, w_tile, acc, *scratch)
            tile = np.zeros((tm, tn), BF16)
            kernel.call(f"gemm_store_bf16_{name}", acc, tile)
            y[m : m + tm, n : n + tn] = tile
    return y


@pytest.mark.parametrize("flags", [GEMM, GEMM_BFP16], ids=["bf16", "bfp16"])
def test_gemm_within_one_ulp(build, flags):
    """Per output, the kernel sums exact products (bf16 x bf16 in k order; bfp16 block
    dot products, block by block) inside each mmul block, then adds the block into the
    tile accumulator; numpy's BLAS sums the same products in its own order. The fp32
    results differ in the last bits: at most 1 bf16 ulp, as long as no output cancels
    to far below its terms (random data: |y| ~ sqrt(K) |terms|)."""
    tm, tk, tn = flags["TM"], flags["TK"], flags["TN"]
    x, w = bf16_randn(tm, 2 * tk), bf16_randn(2 * tn, 2 * tk)
    y = run_gemm(build(kernel_object("gemm.cc", flags)), flags, x, w)
    (expected,) = OPS["gemm"]({"mma": flags["MMA"]}, f32(x), f32(w))
    assert ulps(y, to_bf16(expected)).max() <= 1


def bfp16_edge_rows(rows: int, depth: int) -> np.ndarray:
    """bf16 rows whose 8-value blocks span many exponents, with the conversion's edge
    cases: ties at the block's scale (1/128 and 3/128 beside 1.0: half of its 2^-6
    step), a largest value that rounds up to m = 128 (1.9921875: saturates), -127.5
    steps (a tie to the even -128), an all-zero block, one of fp32 subnormals only (they
    count as zero), and negative zeros."""
    x = bf16_randn(rows, depth) * to_bf16(2.0 ** RNG.integers(-12, 12, (rows, depth)))
    edges = np.array(
        [[1.0, 2**-7, 3 * 2**-7, -(2**-7), 0.75, -0.5, 5 * 2**-7, 1.0],
         [1.9921875, 1.0, -1.0, 0.0, -0.0, 2**-6, 2**-8, 3 * 2**-8],
         [-1.9921875, 0.5, 0.25, 1.0, -1.0, 0.0, 0.0, 1.5],
         [0.0] * 8,
         [1e-39, -1e-39, 2e-39, 0.0, 0.0, 0.0, 0.0, 3e-39],
         [-0.0, 0.0, -0.0, 0.0, 2.0, -2.0, 2**-20, -(2**-20)]], np.float32,
    )  # fmt: skip
    x[: len(edges), :8] = to_bf16(edges)
    return x


@pytest.mark.parametrize("operand", ["x", "w"])
def test_bfp16_conversion_is_bit_exact(build, operand):
    """With the other operand an identity, the GEMM reads out one operand as the mmul
    sees it: every output is one converted value (at most 8 significant bits, exact in
    bf16) times 1, so the kernel and the emulation's to_bfp16 agree bit for bit. w goes
    through the mmul's B blocks (its columns), x through its A blocks (rows)."""
    flags = GEMM_BFP16
    size = 2 * flags["TK"]  # a multiple of TM and TN too
    values, identity = bfp16_edge_rows(2 * flags["TN"], size), np.eye(size, dtype=BF16)
    x, w = (values, identity) if operand == "x" else (identity, values)
    y = run_gemm(build(kernel_object("gemm.cc", flags)), flags, x, w)
    (expected,) = OPS["gemm"]({"mma": "bfp16"}, f32(x), f32(w))
    assert_bit_exact(y, to_bf16(expected))
    read_out = y if operand == "x" else np.ascontiguousarray(y.T)
    assert_bit_exact(read_out, to_bf16(to_bfp16(f32(values))))


def test_bfp16_one_block_gemm_is_bit_exact(build):
    """With K = 8 each output is one exact block dot product, rounded once to bf16 by
    the store: the emulation (to_bfp16 operands, BLAS in any order: the 8 products sit
    on one grid and their sum fits fp32) matches bit for bit."""
    flags = GEMM_ONE_BLOCK
    x, w = bfp16_edge_rows(16, 8), bfp16_edge_rows(32, 8)[::-1].copy()
    y = run_gemm(build(kernel_object("gemm.cc", flags)), flags, x, w)
    (expected,) = OPS["gemm"]({"mma": "bfp16"}, f32(x), f32(w))
    assert_bit_exact(y, to_bf16(expected))


def test_bfp16_conversion_without_the_rounding_mode_is_caught(build, tmp_path):
    """Without set_round_to_nearest_even in the mac, the conversion keeps AIE2P's
    default, floor (mlir-aie mm.cc sets conv_even for this reason): every mantissa
    truncated toward minus infinity, biased low."""
    source = mutant(
        tmp_path, "gemm.cc", "  set_round_to_nearest_even();  // the bfp16 conversion", "  //"
    )  # fmt: skip
    kernel = build(KernelObject(source, kernel_object("gemm.cc", GEMM_BFP16).params))
    kernel.reset_tile()
    size = 2 * GEMM_BFP16["TK"]
    x = bfp16_edge_rows(2 * GEMM_BFP16["TM"], size)
    y = run_gemm(kernel, GEMM_BFP16, x, np.eye(size, dtype=BF16))
    assert (f32(y) <= f32(to_bf16(to_bfp16(f32(x))))).all()
    with pytest.raises(AssertionError):
        assert_bit_exact(y, to_bf16(to_bfp16(f32(x))))


def test_forgotten_rounding_mode_floors_and_is_caught(build, tmp_path):
    """Without set_round_to_nearest_even the core keeps AIE2P's default mode, floor:
    the stored tile is the accumulators rounded toward minus infinity."""
    store = "  for (int i = 0; i < IB; ++i)"
    source = mutant(tmp_path, "gemm.cc", "  set_round_to_nearest_even();\n" + store, store)
    kernel = build(KernelObject(source, kernel_object("gemm.cc", GEMM).params))
    kernel.reset_tile()  # a core that starts
    acc = RNG.standard_normal(GEMM["TM"] * GEMM["TN"]).astype(np.float32)
    tile = np.zeros_like(acc, BF16)
    kernel.call("gemm_store_bf16_32x64x64_bf16", acc, tile)
    # acc holds 4 x 8 blocks (gemm.cc); the tile is row-major.
    rows = acc.reshape(GEMM["TM"] // 4, GEMM["TN"] // 8, 4, 8).transpose(0, 2, 1, 3).reshape(-1)
    bits = rows.view(np.uint32)
    inexact_negative = ((bits & 0xFFFF) != 0) & ((bits >> 31) == 1)
    toward_minus_inf = ((bits >> 16) + inexact_negative).astype(np.uint16)
    np.testing.assert_array_equal(tile.view(np.uint16), toward_minus_inf)
    assert ulps(tile, to_bf16(rows)).max() == 1  # what the emulation comparison catches


def test_rounding_register_is_per_library_and_restorable(build):
    add = build(eltwise(False, False, False))
    rope_kernel = build(rope(False))
    add.reset_tile()
    rope_kernel.reset_tile()
    floor = add.rounding
    check_add(add, False, False, False)  # sets round-to-nearest-even on its own core
    assert add.rounding != floor and rope_kernel.rounding == floor
    add.rounding = floor
    assert add.rounding == floor


@pytest.mark.parametrize("out_f32", [False, True])
def test_gemv(build, out_f32):
    """Per row, 32 fp32 lane sums of bf16 products over every k tile, halved to one on
    the block's last tile; numpy sums in its own order. bf16 logits: at most 1 ulp
    apart; fp32 logits: within the fp32 error bound of a K-term sum, K * 2^-24 * sum |x w|."""
    depth, tn, tk, rows = GEMV["K"], GEMV["TN"], GEMV["TK"], 64
    kernel = build(kernel_object("gemv.cc", GEMV))
    x, w = bf16_randn(depth), bf16_randn(rows, depth)
    y = np.zeros(rows, np.float32 if out_f32 else BF16)
    state = np.zeros(gemv.state_floats(gemv.TN), np.float32)  # gemv.cc State, zeroed by the design
    for n in range(0, rows, tn):
        block = np.zeros(tn, y.dtype)
        for k in range(0, depth, tk):
            w_tile = w[n : n + tn, k : k + tk].copy()
            kernel.call(f"gemv_bf16_{depth}x{tn}x{tk}_{tag(out_f32)}", x, w_tile, block, state)
        y[n : n + tn] = block
    (expected,) = OPS["gemv"]({}, f32(x)[None], f32(w))
    if out_f32:
        bound = depth * 2.0**-24 * (np.abs(f32(w)) @ np.abs(f32(x)))
        assert (np.abs(y - expected[0]) <= bound).all()
    else:
        assert ulps(y, to_bf16(expected[0])).max() <= 1


# -- flash attention --------------------------------------------------------------------


def run_flash_attn(kernel: HostKernel, q, k, v, heads: int, kv_heads: int, cores: int):
    """The design's calls with the query blocks dealt to `cores` cores: core c starts
    at block c and steps by `cores` (its state's initial value, as the design sets
    it); per head and query block of the core, init, one step per [K; V] block (the
    kernel skips those above the diagonal), finish."""
    dim, block = FA["DH"], FA["BQ"]
    blocks, group = q.shape[0] // block, heads // kv_heads
    init, step, finish = (
        f"flash_attn_{n}_{dim}_{block}x{block}" for n in ("init", "step", "finish")
    )
    out = np.zeros_like(q)

    def part(a: np.ndarray, index: int, head: int) -> np.ndarray:
        return a[index * block : (index + 1) * block, head * dim : (head + 1) * dim]

    for core in range(cores):
        state = flash_attn_design.initial_state(dim, core, cores, 0)  # one head per object
        operands = np.zeros(flash_attn_design.operand_bytes(dim), np.uint8)
        for head in range(heads):
            kv_head = head // group
            for qb in range(core, blocks, cores):
                kernel.call(init, part(q, qb, head).copy(), state, operands)
                for kb in range(blocks):
                    keys_values = np.concatenate([part(k, kb, kv_head), part(v, kb, kv_head)])
                    kernel.call(step, keys_values, state, operands)
                rows = np.zeros((block, dim), BF16)
                kernel.call(finish, state, rows, blocks)
                part(out, qb, head)[:] = rows
    return out


def check_flash_attn(kernel: HostKernel, cores: int = 1) -> None:
    """Both take the same bfp16 operands and bf16 exps, but the kernel's online softmax
    takes each key block's exps against the running maximum and rescales them by
    another bf16 exp when the maximum grows, where the emulation exps against the
    row's final maximum. Each weight is then off by a few half-ulps of bf16 (2^-8), and
    its bfp16 rounding (value and rest: about 2^-14 of its block's largest weight)
    falls elsewhere, in independent directions; the weighted mean of v moves by far
    less than the worst case: measured <= 2^-7.98 * max|v| over 8 seeds of these
    inputs, bounded at 2^-7.5 * max|v|; without the rest of the weights it is 2^-7.2 to
    2^-6.0. A query that sees one key more or less moves by about max|v| / keys, far
    above that. The kernel's Q K^T and P V sum in mmul order, not numpy's: they differ in the last
    fp32 bits, which moves an exp's bf16 rounding now and then, inside the bound."""
    heads, kv_heads, seq, dim = 4, 2, 128, FA["DH"]
    q, k = bf16_randn(seq, heads * dim, scale=3.0), bf16_randn(seq, kv_heads * dim, scale=3.0)
    v = bf16_randn(seq, kv_heads * dim)
    ours = run_flash_attn(kernel, q, k, v, heads, kv_heads, cores)
    params = {"heads": heads, "kv_heads": kv_heads, "head_dim": dim, "past": 0}
    (expected,) = OPS["flash_attn"](params, f32(q), f32(k), f32(v))
    difference = np.abs(f32(ours) - f32(to_bf16(expected)))
    assert difference.max() <= 2.0**-7.5 * np.abs(f32(v)).max()


@pytest.mark.parametrize("cores", [1, 2])
def test_flash_attn_within_bound(build, cores):
    check_flash_attn(build(kernel_object("flash_attn.cc", FA)), cores)


@pytest.mark.parametrize(
    "old, new",
    [
        ("(0xFFu << (4 * h + r)) & 0xFFu", "0xFFu"),  # the diagonal block's hidden keys leak
        ("aie::transpose(rows_block(v + at), N8, N8)", "rows_block(v + at)"),  # V, not V^T
        ("store_split(ops, ops->keys + 2 * (g * DG + d) * N8, rows_block(k + at));", ""),  # no K
        ("dot[g].mac(load_operand(keys + N8), queries);", ""),  # K's rest dropped
        ("aie::load_v<OP>(out), rescale", "aie::load_v<OP>(out), 1.0f"),  # never rescaled
        ("acc.mac(a, load_operand(ops->weights + (2 * g + 1) * N8));", ""),  # P's rest dropped
    ],
)  # fmt: skip
def test_mutated_flash_attn_is_caught(build, tmp_path, old, new):
    source = mutant(tmp_path, "flash_attn.cc", old, new)
    with pytest.raises(AssertionError):
        check_flash_attn(build(KernelObject(source, kernel_object("flash_attn.cc", FA).params)))


# -- AIE2P constraints, the builder ----------------------------------------------------
@pytest.mark.parametrize(
    "body, error",
    [
        ("aie::store_v(y, aie::exp2<float>(aie::load_v<16>(x)));", "exp2"),
        ("aie::mmul<4, 8, 16, bfloat16, bfloat16, accauto> m; (void)m;", "mmul shape"),
        ("aie::mmul<8, 8, 8, bfloat16, bfloat16, accauto> m; (void)m;", "the bfp16ebs8 8x8x8"),
        ("aie::store_v(y, aie::load_v<2>(x));", "vectors are 128, 256, 512 or 1024 bits")
    ],
)  # fmt: skip
def test_aie2p_constraints_are_compile_errors(tmp_path, body, error):
    """What aie_api refuses on AIE2P, the host model refuses too (exp2 with a float
    result, a bf16 mmul shape XDNA 2 lacks, the 8x8x8 one, which XDNA 2 has only as
    aie_api's bfp16 emulation, not modelled: the native bfp16 mmul instead; a 64-bit
    vector)."""
    source = tmp_path / "bad.cc"
    source.write_text(
        f'#include <aie_api/aie.hpp>\nextern "C" void f(const float *x, float *y) {{ {body} }}\n'
    )
    with pytest.raises(HostCompileError, match=error):
        build_library(KernelObject(source, ()), tmp_path / "home")


def test_missing_compiler_is_one_line_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(UserError, match=r"apt install g\+\+") as error:
        build_library(eltwise(False, False, False), tmp_path)
    assert "\n" not in str(error.value)


def test_library_key_follows_source_and_defines(tmp_path):
    cxx = host_kernels.compiler()
    obj = eltwise(False, False, False)
    key = host_kernels.library_key(obj, cxx)
    assert key == host_kernels.library_key(eltwise(False, False, False), cxx)
    assert key != host_kernels.library_key(eltwise(True, False, True), cxx)
    edited = mutant(tmp_path, "eltwise.cc", "static constexpr int LANES", "constexpr int LANES")
    assert key != host_kernels.library_key(KernelObject(edited, obj.params), cxx)


def test_counts_report_what_one_call_issues_by_slot_class(build):
    """The add of 64 bf16 lanes in 16-lane steps: per step two 256-bit loads, the
    accumulator add (3 conversions, 1 add), a bf16 store; one rounding-mode write."""
    add = build(kernel_object("eltwise.cc", {"CHUNK": 64, "A_F32": False, "B_F32": False,
                                             "C_F32": False}))  # fmt: skip
    a, b, c = (np.zeros(64, BF16) for _ in range(3))
    counts = add.counts("add_bf16_bf16_bf16_64", a, b, c)
    assert counts["load_256"] == 8 and counts["store_256"] == 4
    assert counts["alu"] == 4 and counts["scalar"] == 1
    assert counts["convert"] == 4 * (2 + 2 + 3 + 2)  # widen a, b (ups, srs); add; store
    assert add.counts("add_bf16_bf16_bf16_64", a, b, c) == counts  # reset between calls
