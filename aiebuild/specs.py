"""The six ELF specs of a Llama-family model (DESIGN.md section 4), derived from
the model shape and the prefill buckets.

A spec is declarative: launches in order, each an op of the vocabulary with its
parameters, reading and writing named ELF arguments whose roles fix the buffer
behaviour. The emu target ships the spec itself as the launch plan; the npu2
target turns each launch into an IRON design and stitches them into one ELF.
"""

from __future__ import annotations

from collections.abc import Iterable

from aierun.abi import ArgSpec, ElfSpec, Launch, Role
from aierun.errors import UserError
from aierun.model import ModelShape

DEFAULT_BUCKETS = (64, 256, 2048)
LM_HEAD_PARTITIONS = 8
# Every GEMM/GEMV dimension is tiled in blocks of this many elements on the cores.
TILE = 64
# The NPU2 array a launch may spread over: 8 columns of 4 compute cores
# (aiebuild/array/iron_record.NPU2). Each launch records the part it uses as the params
# `columns` x `core_rows`; its design places one worker per core of that part.
COLUMNS, CORE_ROWS = 8, 4
GEMV_ROWS = 32  # output rows per GEMV core step (aiebuild/ops/gemv.py TN)
ATTN_BLOCK = 32  # query and key rows per flash-attention block (aiebuild/ops/flash_attn.py)
ELTWISE_LANES = 16  # elements per vector step of the elementwise kernels

W, C, IN, MID, OUT, CACHE = (
    Role.WEIGHT, Role.CONST, Role.INPUT, Role.INTERMEDIATE, Role.OUTPUT, Role.CACHE
)  # fmt: skip
# Precision choices (measured against transformers in fp32 over a prompt set: the
# mean 1 - cosine of the logits drops about 3x versus bf16 everywhere):
# - the residual stream (x, h, y) stays fp32 in DDR: the residual adds read and
#   write fp32, rmsnorm reads fp32; GEMM operands remain bf16;
# - the rope table is fp32 (a bf16 cos/sin is off by up to 2^-9 relatively);
# - the logits are the GEMV's fp32 accumulators (bf16 logits tie top candidates).
F32 = "f32"
LAYER = "model.layers.{layer}."


def _arg(
    name: str,
    shape: Iterable[int],
    role: Role,
    source: str | None = None,
    dtype: str = "bf16",
    **kw,
) -> ArgSpec:
    return ArgSpec(name, tuple(shape), dtype, role, source, **kw)


def check_tileable(shape: ModelShape) -> None:
    """Refuse, naming the dimension, a model the kernels cannot tile."""
    dims = {
        "hidden_size (E)": shape.hidden,
        "head_dim (Dh)": shape.head_dim,
        "intermediate_size (F)": shape.ffn,
        "num_key_value_heads*head_dim (KV)": shape.kv_dim,
    }
    for label, value in dims.items():
        if value % TILE:
            raise UserError(
                f"{label} = {value} is not a multiple of {TILE}: the GEMM/GEMV kernels tile "
                f"every matrix dimension in blocks of {TILE}, so this model cannot be compiled."
            )
    if shape.n_heads % shape.n_kv_heads:
        raise UserError(
            f"num_attention_heads ({shape.n_heads}) is not a multiple of num_key_value_heads "
            f"({shape.n_kv_heads}): grouped-query attention needs whole groups."
        )


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (at least 1)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _array(columns: int, core_rows: int = 1) -> dict[str, int]:
    return {"columns": columns, "core_rows": core_rows}


# The matmul mode of each prefill GEMM, by launch label: -D AIEK_MMA of
# kernels_src/gemm.cc: "bf16", a true bf16 x bf16 mmul (4x8x8), or "bfp16", bf16
# operands converted to blocks of 8 sharing an exponent for the 8x8x8 bfp16 mmul
# (AIE_API_EMULATE_BFLOAT16_MMUL_WITH_BFP16). The GEMVs have no mmul.
# Chosen per launch, with numbers (docs/benchmarks.md, "bf16 vs bfp16 MMA"). The GEMMs
# are core-bound, and an 8x8x8 bfp16 block does 512 MACs in ~6.5 cycles where a bf16
# 4x8x8 does 256 in 8: on Llama-3.2-1B at 2048 the time model gives o_ffn 75.1 -> 35.4 ms
# and rms_gemms_rope 9.55 -> 4.97 ms (the seed measured 41.0 and 7.3). Accuracy on the
# default model (verify top-1 / max logit diff / diagnosis lowest cosine): all bf16
# 98.4 % / 1.10 / 0.9964; all bfp16 96.9 % / 2.29 / 0.9924, and the first greedy token
# of "What is the capital of France?" flips to the reference's near-tie second choice
# (tests/test_spine.py). K and V feed the KV cache every later token reads, Q only its
# own position's scores: with bfp16 everywhere but K and V, verify gives 99.2 % / 1.43 /
# 0.9921 and every token of the spine test matches, and the time model gives
# rms_gemms_rope 6.50 ms (6.76 with its later kv_store launch; the seed's 7.3) and o_ffn
# 35.4 ms.
GEMM_MMA = {
    "gemm Q": "bfp16", "gemm K": "bf16", "gemm V": "bf16",
    "gemm O": "bfp16", "gemm gate": "bfp16", "gemm up": "bfp16", "gemm down": "bfp16",
}  # fmt: skip


def matmul_params(op: str, m: int, k: int, n: int, mma: str = "bf16") -> dict[str, int | str]:
    """A GEMM's cores: output tile columns over array columns, 64-row blocks of x over
    core rows, and its matmul mode `mma` (GEMM_MMA). A GEMV's: one weight stream per
    shim input channel but the one that broadcasts x, each feeding one core
    (aiebuild/ops/gemv.py), as many as there are 32-row output blocks."""
    if op == "gemm":
        return {"M": m, "K": k, "N": n, "mma": mma, **_array(
            largest_divisor(n // TILE, COLUMNS), largest_divisor(max(m // TILE, 1), CORE_ROWS)
        )}  # fmt: skip
    streams = min(2 * COLUMNS - 1, n // GEMV_ROWS)
    return {"M": m, "K": k, "N": n, **_array(streams // 2 + 1, 2)}


def _matmul(op: str, label: str, m: int, k: int, n: int, inputs: tuple[str, str], output: str
            ) -> Launch:  # fmt: skip
    """A GEMM or GEMV launch, in its matmul mode (GEMM_MMA, by label)."""
    return Launch(op, matmul_params(op, m, k, n, GEMM_MMA[label]), inputs, (output,), label)


def row_params(rows: int) -> dict[str, int]:
    """Row-wise ops (rmsnorm, rope): whole rows per column, one core per column."""
    return {"rows": rows, **_array(largest_divisor(rows, COLUMNS))}


def eltwise_params(rows: int, cols: int) -> dict[str, int]:
    """Elementwise ops: equal runs of whole vectors per column."""
    vectors = rows * cols // ELTWISE_LANES
    return {"rows": rows, "cols": cols, **_array(largest_divisor(vectors, COLUMNS))}


def attention_params(shape: ModelShape, s: int) -> dict[str, int]:
    """Query heads of one KV group over core rows, successive query blocks over
    columns (aiebuild/ops/flash_attn.py): core rows divide the group, whole groups per
    round, whole rounds per KV head."""
    group, blocks = shape.n_heads // shape.n_kv_heads, s // ATTN_BLOCK
    core_rows = largest_divisor(group, CORE_ROWS)
    fits = [c for c in range(1, COLUMNS + 1) if (c * core_rows) % group == 0
            and blocks % (c * core_rows // group) == 0]  # fmt: skip
    return _array(max(fits), core_rows)


def _rms_projections_rope(shape: ModelShape, rows: int, gemm: str) -> list[Launch]:
    e, q, kv, dh = shape.hidden, shape.q_dim, shape.kv_dim, shape.head_dim
    rope = {**row_params(rows), "head_dim": dh}
    norm = {**row_params(rows), "E": e, "eps": shape.rms_eps}
    return [
        Launch("rmsnorm", norm, ("x", "attn_norm"), ("xn",)),
        _matmul(gemm, "gemm Q", rows, e, q, ("xn", "wq"), "q"),
        _matmul(gemm, "gemm K", rows, e, kv, ("xn", "wk"), "k"),
        _matmul(gemm, "gemm V", rows, e, kv, ("xn", "wv"), "v"),
        Launch("rope", {**rope, "heads": shape.n_heads}, ("q", "rope"), ("q_roped",), "rope Q"),
        Launch("rope", {**rope, "heads": shape.n_kv_heads}, ("k", "rope"), ("k_roped",), "rope K"),
    ]


def _projection_args(shape: ModelShape, rows: int, rope_role: Role) -> list[ArgSpec]:
    e, q, kv = shape.hidden, shape.q_dim, shape.kv_dim
    return [
        _arg("x", (rows, e), IN, dtype=F32),
        _arg("attn_norm", (e,), W, LAYER + "input_layernorm.weight"),
        _arg("wq", (q, e), W, LAYER + "self_attn.q_proj.weight"),
        _arg("wk", (kv, e), W, LAYER + "self_attn.k_proj.weight"),
        _arg("wv", (kv, e), W, LAYER + "self_attn.v_proj.weight"),
        _arg("rope", (rows, shape.head_dim), rope_role, "rope" if rope_role is C else None, F32),
        _arg("xn", (rows, e), MID),
        _arg("q", (rows, q), MID),
        _arg("k", (rows, kv), MID),
        _arg("q_roped", (rows, q), OUT),
        _arg("k_roped", (rows, kv), OUT),
        _arg("v", (rows, kv), OUT),
    ]


def kv_store_params(shape: ModelShape, rows: int) -> dict[str, int]:
    """Rows over columns, one core per column widening its block of K and of V."""
    return {"kv_heads": shape.n_kv_heads, "head_dim": shape.head_dim, **row_params(rows)}


def rms_gemms_rope(shape: ModelShape, bucket: int) -> ElfSpec:
    """The prefill's projections, and its K/V written again as the KV cache decode
    reads (`kv_store`: fp32 per KV head; k_roped and v stay bf16 rows for flash_attn)."""
    cache = (shape.n_kv_heads, bucket, shape.head_dim)
    store = Launch("kv_store", kv_store_params(shape, bucket), ("k_roped", "v"),
                   ("k_cache", "v_cache"), "KV cache")  # fmt: skip
    return ElfSpec(
        "rms_gemms_rope", "prefill", bucket,
        (*_projection_args(shape, bucket, C), _arg("k_cache", cache, CACHE, dtype=F32),
         _arg("v_cache", cache, CACHE, dtype=F32)),
        (*_rms_projections_rope(shape, bucket, "gemm"), store),
    )  # fmt: skip


def rms_gemv_rope(shape: ModelShape) -> ElfSpec:
    return ElfSpec(
        "rms_gemv_rope", "decode", 0,
        tuple(_projection_args(shape, 1, IN)),
        tuple(_rms_projections_rope(shape, 1, "gemv")),
    )  # fmt: skip


def flash_attn(shape: ModelShape, bucket: int) -> ElfSpec:
    s, q, kv = bucket, shape.q_dim, shape.kv_dim
    params = {
        "S": s, "heads": shape.n_heads, "kv_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim, "causal": True, **attention_params(shape, s),
    }  # fmt: skip
    args = (
        _arg("q_roped", (s, q), IN),
        _arg("k_roped", (s, kv), IN),
        _arg("v", (s, kv), IN),
        _arg("attn_out", (s, q), OUT),
    )
    launch = Launch("flash_attn", params, ("q_roped", "k_roped", "v"), ("attn_out",), "GQA")
    return ElfSpec("flash_attn", "prefill", bucket, args, (launch,))


def _o_ffn_launches(shape: ModelShape, rows: int, gemm: str) -> list[Launch]:
    e, f, q = shape.hidden, shape.ffn, shape.q_dim
    eltwise, norm = eltwise_params(rows, e), {**row_params(rows), "E": e, "eps": shape.rms_eps}
    return [
        _matmul(gemm, "gemm O", rows, q, e, ("attn_out", "wo"), "o"),
        Launch("add", eltwise, ("o", "x"), ("h",), "add residual"),
        Launch("rmsnorm", norm, ("h", "ffn_norm"), ("hn",)),
        _matmul(gemm, "gemm gate", rows, e, f, ("hn", "w_gate"), "g"),
        _matmul(gemm, "gemm up", rows, e, f, ("hn", "w_up"), "u"),
        Launch("silu_mul", eltwise_params(rows, f), ("g", "u"), ("a",)),
        _matmul(gemm, "gemm down", rows, f, e, ("a", "w_down"), "d"),
        Launch("add", eltwise, ("d", "h"), ("y",), "add residual"),
    ]


def _o_ffn_args(shape: ModelShape, rows: int) -> list[ArgSpec]:
    e, f = shape.hidden, shape.ffn
    return [
        _arg("attn_out", (rows, shape.q_dim), IN),
        _arg("x", (rows, e), IN, dtype=F32),
        _arg("wo", (e, shape.q_dim), W, LAYER + "self_attn.o_proj.weight"),
        _arg("ffn_norm", (e,), W, LAYER + "post_attention_layernorm.weight"),
        _arg("w_gate", (f, e), W, LAYER + "mlp.gate_proj.weight"),
        _arg("w_up", (f, e), W, LAYER + "mlp.up_proj.weight"),
        _arg("w_down", (e, f), W, LAYER + "mlp.down_proj.weight"),
        _arg("o", (rows, e), MID),
        _arg("h", (rows, e), MID, dtype=F32),
        _arg("hn", (rows, e), MID),
        *(_arg(n, (rows, f), MID) for n in ("g", "u", "a")),
        _arg("d", (rows, e), MID),
        _arg("y", (rows, e), OUT, dtype=F32),
    ]


def o_ffn(shape: ModelShape, bucket: int) -> ElfSpec:
    launches = tuple(_o_ffn_launches(shape, bucket, "gemm"))
    return ElfSpec("o_ffn", "prefill", bucket, tuple(_o_ffn_args(shape, bucket)), launches)


def o_gemv_ffn(shape: ModelShape) -> ElfSpec:
    launches = tuple(_o_ffn_launches(shape, 1, "gemv"))
    return ElfSpec("o_gemv_ffn", "decode", 0, tuple(_o_ffn_args(shape, 1)), launches)


def lm_head_rows(shape: ModelShape, partitions: int = LM_HEAD_PARTITIONS) -> int:
    """Rows of one LM-head partition: the vocabulary padded to whole tiles."""
    per_partition = -(-shape.vocab // partitions)
    return -(-per_partition // TILE) * TILE


def lm_head_gemv(shape: ModelShape, partitions: int = LM_HEAD_PARTITIONS) -> ElfSpec:
    """One GEMV over the partitioned rows (w_lm is [P, rows, E], contiguous): one
    launch spreads them over every column's shim channels, with no reconfiguration
    between partitions."""
    rows, e = lm_head_rows(shape, partitions), shape.hidden
    source = "model.embed_tokens.weight" if shape.tie_embeddings else "lm_head.weight"
    args = (
        _arg("x", (1, e), IN),
        _arg("w_lm", (partitions, rows, e), W, source, layout="partitioned_rows"),
        _arg("logits", (partitions, rows), OUT, dtype=F32),
    )
    params = matmul_params("gemv", 1, e, partitions * rows)
    launch = Launch("gemv", params, ("x", "w_lm"), ("logits",), "LM head")
    return ElfSpec("lm_head_gemv", "lm_head", 0, args, (launch,), {"vocab": shape.vocab})


def model_specs(shape: ModelShape, buckets: Iterable[int] = DEFAULT_BUCKETS) -> list[ElfSpec]:
    """Every ELF the runtime needs for this model: prefill ELFs per bucket, then decode."""
    check_tileable(shape)
    buckets = sorted(set(buckets))
    if not buckets or buckets[0] < 1:
        raise UserError(f"prefill buckets must be positive lengths, got {buckets}")
    too_long = [b for b in buckets if b > shape.max_positions]
    if too_long:
        raise UserError(
            f"prefill buckets {too_long} exceed the model's max_position_embeddings "
            f"({shape.max_positions})"
        )
    specs = []
    for bucket in buckets:
        specs += [rms_gemms_rope(shape, bucket), flash_attn(shape, bucket), o_ffn(shape, bucket)]
    return specs + [rms_gemv_rope(shape), o_gemv_ffn(shape), lm_head_gemv(shape)]
