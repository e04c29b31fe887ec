"""The six ELF specs of a Llama-family model (docs/design.md section 4), derived from
the model shape and the prefill buckets.

A spec is declarative: launches in order, each an op of the vocabulary with its
parameters, reading and writing named ELF arguments whose roles fix the buffer
behaviour. The emu target ships the spec itself as the launch plan; the npu2
target turns each launch into an IRON design and stitches them into one ELF.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiebuild import ops
from aiebuild.ops import decode_attn, eltwise, gemm, gemv, kv_store, rmsnorm, rope
from aiebuild.ops import flash_attn as attention
from aiebuild.ops.gemm import TILE
from aiebuild.weights import LM_HEAD, WeightTypes, uniform
from aierun.abi import (
    BUCKET_MULTIPLE,
    FLASH_ATTN,
    KV_CACHE,
    LM_HEAD_GEMV,
    O_FFN,
    O_GEMV_FFN,
    RMS_GEMMS_ROPE,
    RMS_GEMV_ROPE,
    SOURCE_JOIN,
    SWIGLU,
    WALK,
    ArgSpec,
    ElfSpec,
    Launch,
    Role,
    attention_elf,
    parse_binding,
)
from aierun.errors import UserError
from aierun.model import ModelShape
from aierun.ops.decode_attn import PAD

DEFAULT_BUCKETS = (64, 256, 2048)
LM_HEAD_PARTITIONS = 8

W, IN, MID, OUT, CACHE = (
    Role.WEIGHT, Role.INPUT, Role.INTERMEDIATE, Role.OUTPUT, Role.CACHE
)  # fmt: skip
# Precision choices (measured against transformers in fp32 over a prompt set: the
# mean 1 - cosine of the logits drops about 3x versus bf16 everywhere):
# - the residual stream (x, h, y) stays fp32 in DDR: the residual adds read and
#   write fp32, rmsnorm reads fp32; GEMM operands remain bf16;
# - the rope table is fp32 (a bf16 cos/sin is off by up to 2^-9 relatively);
# - the logits are the GEMV's fp32 accumulators (bf16 logits tie top candidates).
F32 = "f32"
LAYER = "model.layers.{layer}."
BF16_TYPES = uniform("bf16")


def _arg(
    name: str,
    shape: Iterable[int],
    role: Role,
    source: str | None = None,
    dtype: str = "bf16",
    **kw,
) -> ArgSpec:
    return ArgSpec(name, tuple(shape), dtype, role, source, **kw)


def _matrix(name: str, rows: int, k: int, matrix: str, types: WeightTypes, **kw) -> ArgSpec:
    """A GEMV/GEMM weight [rows, k] of a layer in the type `types` gives checkpoint
    `matrix`: bf16, or a GGUF block type in the GEMV's device layout
    (aiebuild/ops/gemv.py, aierun/ops/quant.py). Its source is `matrix` unless given."""
    weights = types[matrix.removeprefix(LAYER) if matrix.startswith(LAYER) else LM_HEAD]
    shape = gemv.weight_shape(rows, k, weights)
    layout = kw.pop("layout", gemv.weight_layout(k, weights))
    source = kw.pop("source", matrix)
    return _arg(name, (*kw.pop("lead", ()), *shape), W, source, weights, layout=layout, **kw)


def _elf(name: str, phase: str, bucket: int, args: tuple[ArgSpec, ...],
         launches: tuple[Launch, ...], params: dict | None = None) -> ElfSpec:  # fmt: skip
    """An ElfSpec with each launch's FLOPs and DDR bytes filled in (ops.with_work),
    without the intermediates no launch binds (a fused launch keeps in core memory
    what separate ones passed through DDR)."""
    bound = {parse_binding(b)[0] for launch in launches for b in (*launch.inputs, *launch.outputs)}
    used = tuple(arg for arg in args if arg.role is not MID or arg.name in bound)
    return ops.with_work(ElfSpec(name, phase, bucket, used, launches, params or {}))


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
    rows = attention.block(shape.head_dim)
    if attention.BLOCK_ELEMENTS % shape.head_dim or rows % attention.KEY_GROUP:
        raise UserError(
            f"head_dim (Dh) = {shape.head_dim}: flash_attn's blocks hold "
            f"{attention.BLOCK_ELEMENTS} elements, whole rows of Dh in a multiple of "
            f"{attention.KEY_GROUP} rows (Dh 64, 128 or 256), so this model cannot be compiled."
        )
    if shape.n_heads % shape.n_kv_heads:
        raise UserError(
            f"num_attention_heads ({shape.n_heads}) is not a multiple of num_key_value_heads "
            f"({shape.n_kv_heads}): grouped-query attention needs whole groups."
        )


# The matmul mode of each prefill GEMM, by launch label: -D AIEK_MMA of
# kernels_src/gemm.cc: "bf16", a true bf16 x bf16 mmul (4x8x8), or "bfp16", bf16
# operands converted on the core to blocks of 8 sharing an exponent for the native
# 8x8x8 bfp16 mmul. The GEMVs have no mmul. The GEMMs are
# core-bound and a bfp16 block does twice the MACs of a bf16 one in fewer cycles, so
# bfp16 in every prefill GEMM. K and V were kept in bf16 while the spine test asked for
# an exact first token at a near tie; since it accepts either token of a tie within
# 0.25 logits, bfp16 K and V pass it and `doit verify` (docs/benchmarks.md, "bf16 vs
# bfp16 MMA", 2026-12-03 choice).
GEMM_MMA = {
    "gemm Q": "bfp16", "gemm K": "bfp16", "gemm V": "bfp16",
    "gemm O": "bfp16", "gemm gate": "bfp16", "gemm up": "bfp16", "gemm down": "bfp16",
}  # fmt: skip


def _matmul(op: str, label: str, m: int, k: int, n: int, inputs: tuple[str, str], output: str
            ) -> Launch:  # fmt: skip
    """A GEMM (in its matmul mode, GEMM_MMA by label) or GEMV launch."""
    params = gemm.params(m, k, n, GEMM_MMA[label]) if op == "gemm" else gemv.params(m, k, n)
    return Launch(op, params, inputs, (output,), label)


PROJECTIONS = (("q", "gemm Q"), ("k", "gemm K"), ("v", "gemm V"))


def _projected(shape: ModelShape, name: str) -> str:
    """What projection `name` writes: its epilogue's input, or `name` itself."""
    return _stage_names(shape, name)[0]


def _fused_projections(shape: ModelShape, matmul: str, types: WeightTypes) -> bool:
    """Decode's Q/K/V GEMVs are one launch, RMSNorm its prologue, when their weights
    share a type (one kernel) and a core holds the prologue's data."""
    kinds = {types[_weight_source(n)] for n, _ in PROJECTIONS}
    return matmul == "gemv" and len(kinds) == 1 and gemv.prologue_fits(shape.hidden, *kinds)


def _residual_in_next_layer(shape: ModelShape, matmul: str, types: WeightTypes) -> bool:
    """Whether decode's residual add after down is the next layer's QKV prologue (the
    GEMV ELFs only): the QKV GEMV is one launch and a core holds the add's vectors
    beside it. o_gemv_ffn then hands on d (rounded to bf16, as fp32) and h instead of
    their sum y, and the host adds them for the final norm after the last layer."""
    kind = types[_weight_source("q")]
    return _fused_projections(shape, matmul, types) and gemv.prologue_fits(
        shape.hidden, kind, prologue=gemv.ADD_RMSNORM
    )


def _ffn_prologue(shape: ModelShape, matmul: str, types: WeightTypes) -> str | None:
    """What decode's gate+up GEMV takes in as its prologue: the residual add and the
    FFN's RMSNorm, or the RMSNorm alone, as far as a core holds their data."""
    gate = types[GATE.removeprefix(LAYER)]
    fits = [kind for kind in (gemv.ADD_RMSNORM, gemv.RMSNORM)
            if gemv.prologue_fits(shape.hidden, gate, SWIGLU, kind)]  # fmt: skip
    return fits[0] if matmul == "gemv" and fits else None


def _weight_source(name: str) -> str:
    """The checkpoint tensor of projection `name`'s weight, as WeightTypes keys it."""
    return f"self_attn.{name}_proj.weight"


def _rms_projections_rope(
    shape: ModelShape, rows: int, matmul: str, types: WeightTypes = BF16_TYPES
) -> list[Launch]:
    """RMSNorm, the Q/K/V projections (each followed by its family's epilogue), rope of
    Q and K (one launch).
    Decode's three GEMVs, when their weights share a type, are one launch with RMSNorm
    as its prologue (aiebuild/ops/gemv.py): one launch where there were four, three
    reconfigurations of the array fewer; with the previous layer's residual add before
    it too (`_residual_in_next_layer`), whose sum x the first core writes."""
    e, dh = shape.hidden, shape.head_dim
    widths = {"q": shape.q_dim, "k": shape.kv_dim, "v": shape.kv_dim}
    if _fused_projections(shape, matmul, types):
        add = _residual_in_next_layer(shape, matmul, types)
        params = gemv.params(
            rows, e, sum(widths.values()), rmsnorm_eps=shape.rms_eps, add_first=add
        )
        inputs = (*(("d", "h") if add else ("x",)), "attn_norm", *(f"w{n}" for n, _ in PROJECTIONS))
        outputs = (*(_projected(shape, n) for n, _ in PROJECTIONS), *(("x",) if add else ()))
        launches = [Launch("gemv", params, inputs, outputs, "gemv QKV")]
        launches += [stage for n, _ in PROJECTIONS for stage in _epilogue(shape, rows, n)]
    else:
        norm = rmsnorm.params(rows, e, shape.rms_eps)
        launches = [Launch("rmsnorm", norm, ("x", "attn_norm"), ("xn",))]
        for name, label in PROJECTIONS:
            launches.append(_matmul(matmul, label, rows, e, widths[name], ("xn", f"w{name}"),
                                    _projected(shape, name)))  # fmt: skip
            launches += _epilogue(shape, rows, name)
    heads = [shape.n_heads, shape.n_kv_heads]
    rotate = Launch("rope", rope.params(rows, heads, dh), ("q", "k", "rope"),
                    ("q_roped", "k_roped"), "rope Q, K")  # fmt: skip
    return [*launches, rotate]


def _stages(shape: ModelShape, name: str) -> list[str]:
    """The epilogue of projection `name`: Qwen2's bias row (q, k, v), then Qwen3's
    per-head RMSNorm (q, k)."""
    return ["bias"] * shape.attention_bias + ["norm"] * (shape.qk_norm and name != "v")


def _stage_names(shape: ModelShape, name: str) -> list[str]:
    """What the projection and each epilogue stage write; the last is `name` itself,
    the tensor rope (q, k) or flash_attn and the KV cache (v) read."""
    stages = _stages(shape, name)
    return [f"{name}_{stage}_in" for stage in stages] + [name]


def _epilogue(shape: ModelShape, rows: int, name: str) -> list[Launch]:
    heads = shape.n_heads if name == "q" else shape.n_kv_heads
    width, names = heads * shape.head_dim, _stage_names(shape, name)
    launches = []
    for i, stage in enumerate(_stages(shape, name)):
        io = (names[i], names[i + 1])
        if stage == "bias":
            params = eltwise.bias_params(rows, width)
            launches.append(Launch("bias", params, (io[0], f"b{name}"), io[1:], f"bias {name}"))
        else:  # rmsnorm over the rows * heads rows of Dh the tensor is
            params = rmsnorm.params(rows * heads, shape.head_dim, shape.rms_eps)
            launches.append(Launch("rmsnorm", params, (io[0], f"{name}_norm"), io[1:],
                                   f"{name} norm"))  # fmt: skip
    return launches


def _epilogue_args(shape: ModelShape, rows: int) -> list[ArgSpec]:
    """The epilogues' weights and the projections' outputs they read."""
    widths = {"q": shape.q_dim, "k": shape.kv_dim, "v": shape.kv_dim}
    args = []
    for name, width in widths.items():
        if shape.attention_bias:
            args.append(_arg(f"b{name}", (width,), W, LAYER + f"self_attn.{name}_proj.bias"))
        if "norm" in _stages(shape, name):
            source = LAYER + f"self_attn.{name}_norm.weight"
            args.append(_arg(f"{name}_norm", (shape.head_dim,), W, source))
        args += [_arg(n, (rows, width), MID) for n in _stage_names(shape, name)[:-1]]
    return args


def _norm_weight(name: str, e: int, source: str, prologue: bool) -> ArgSpec:
    """An RMSNorm weight: bf16, or widened to fp32 at preload (exact) for a GEMV's
    prologue, which receives it in the fifo that brings the fp32 residual stream."""
    return _arg(name, (e,), W, LAYER + source, dtype=F32 if prologue else "bf16")


def _projection_args(
    shape: ModelShape,
    rows: int,
    types: WeightTypes = BF16_TYPES,
    prologue: bool = False,
    add: bool = False,
) -> list[ArgSpec]:
    """With `add`, the residual stream x is the sum of the previous layer's d and h,
    which the projections' prologue adds and hands on."""
    e, q, kv = shape.hidden, shape.q_dim, shape.kv_dim
    residual = (
        [_arg("d", (rows, e), IN, dtype=F32), _arg("h", (rows, e), IN, dtype=F32),
         _arg("x", (rows, e), OUT, dtype=F32)]
        if add else [_arg("x", (rows, e), IN, dtype=F32)]
    )  # fmt: skip
    return [
        *residual,
        _norm_weight("attn_norm", e, "input_layernorm.weight", prologue),
        _matrix("wq", q, e, LAYER + "self_attn.q_proj.weight", types),
        _matrix("wk", kv, e, LAYER + "self_attn.k_proj.weight", types),
        _matrix("wv", kv, e, LAYER + "self_attn.v_proj.weight", types),
        # The rows' positions' cos/sin, from the host: a prompt's chunk starts anywhere.
        _arg("rope", (rows, shape.head_dim), IN, dtype=F32),
        _arg("xn", (rows, e), MID),
        _arg("q", (rows, q), MID),
        _arg("k", (rows, kv), MID),
        *_epilogue_args(shape, rows),
        _arg("q_roped", (rows, q), OUT),
        _arg("k_roped", (rows, kv), OUT),
        _arg("v", (rows, kv), OUT),
    ]


def rms_gemms_rope(shape: ModelShape, bucket: int) -> ElfSpec:
    """The prefill's projections, and its K/V written again as the KV cache decode
    reads (`kv_store`: fp32 per KV head; k_roped and v stay bf16 rows for flash_attn)."""
    cache = (shape.n_kv_heads, bucket, shape.head_dim)
    store = Launch("kv_store", kv_store.params(bucket, shape.n_kv_heads, shape.head_dim),
                   ("k_roped", "v"), ("k_cache", "v_cache"), "KV cache")  # fmt: skip
    return _elf(
        RMS_GEMMS_ROPE, "prefill", bucket,
        (*_projection_args(shape, bucket), _arg("k_cache", cache, CACHE, dtype=F32),
         _arg("v_cache", cache, CACHE, dtype=F32)),
        (*_rms_projections_rope(shape, bucket, "gemm"), store),
    )  # fmt: skip


def rms_gemv_rope(shape: ModelShape, types: WeightTypes = BF16_TYPES) -> ElfSpec:
    fused = _fused_projections(shape, "gemv", types)
    add = _residual_in_next_layer(shape, "gemv", types)
    return _elf(
        RMS_GEMV_ROPE, "decode", 0,
        tuple(_projection_args(shape, 1, types, fused, add)),
        tuple(_rms_projections_rope(shape, 1, "gemv", types)),
    )  # fmt: skip


def flash_attn(shape: ModelShape, bucket: int) -> ElfSpec:
    s, q, kv = bucket, shape.q_dim, shape.kv_dim
    params = attention.params(shape.n_heads, shape.n_kv_heads, shape.head_dim, s)
    args = (
        _arg("q_roped", (s, q), IN),
        _arg("k_roped", (s, kv), IN),
        _arg("v", (s, kv), IN),
        _arg("attn_out", (s, q), OUT),
    )
    launch = Launch("flash_attn", params, ("q_roped", "k_roped", "v"), ("attn_out",), "GQA")
    return _elf(FLASH_ATTN, "prefill", bucket, args, (launch,))


def flash_attn_past(shape: ModelShape, bucket: int, past: int, context: int) -> ElfSpec:
    """A later chunk of a prompt longer than every bucket: its `bucket` queries at
    positions past .. past + bucket - 1 attend to the KV cache, which holds the past's
    positions and (the host wrote them first) the chunk's own."""
    s, q = bucket, shape.q_dim
    params = attention.params(shape.n_heads, shape.n_kv_heads, shape.head_dim, s, past)
    args = (
        _arg("q_roped", (s, q), IN),
        _arg(KV_CACHE, kv_cache_shape(shape, context), IN),
        _arg("attn_out", (s, q), OUT),
    )
    launch = Launch("flash_attn", params, ("q_roped", KV_CACHE), ("attn_out",), "GQA past")
    return _elf(attention_elf(past), "prefill", bucket, args, (launch,))


def chunk_pasts(buckets: Iterable[int], context: int) -> range:
    """Where the later chunks of a long prompt start: every multiple of the largest
    bucket below the context (the earlier chunks fill whole largest buckets)."""
    largest = max(buckets)
    return range(largest, context, largest)


GATE, UP = LAYER + "mlp.gate_proj.weight", LAYER + "mlp.up_proj.weight"


def _swiglu_gemms(shape: ModelShape, rows: int) -> list[Launch]:
    """a = silu(hn W_gate^T) * (hn W_up^T) in prefill: two GEMMs and silu_mul (decode's
    is one GEMV launch, its silu_mul the epilogue: _o_ffn_launches)."""
    e, f = shape.hidden, shape.ffn
    return [
        _matmul("gemm", "gemm gate", rows, e, f, ("hn", "w_gate"), "g"),
        _matmul("gemm", "gemm up", rows, e, f, ("hn", "w_up"), "u"),
        Launch("silu_mul", eltwise.params(rows, f), ("g", "u"), ("a",)),
    ]


def _swiglu_weights(shape: ModelShape, matmul: str, types: WeightTypes) -> list[ArgSpec]:
    """The weights of SwiGLU's gate and up: for the GEMV one weight [2F, ...],
    their rows interleaved (in one type: aiebuild/weights.py SWIGLU_PAIR)."""
    e, f = shape.hidden, shape.ffn
    if matmul == "gemv":
        layout = gemv.weight_layout(e, types[GATE.removeprefix(LAYER)], SWIGLU)
        return [_matrix("w_gate_up", 2 * f, e, GATE, types, layout=layout,
                        source=GATE + SOURCE_JOIN + UP)]  # fmt: skip
    return [_matrix("w_gate", f, e, GATE, types), _matrix("w_up", f, e, UP, types)]


def _o_ffn_launches(
    shape: ModelShape, rows: int, matmul: str, types: WeightTypes = BF16_TYPES
) -> list[Launch]:
    """The O projection and the FFN, each with its residual add. Decode's gate and up
    are one GEMV with silu_mul its epilogue and, as far as a core holds them, the add
    after O and the FFN's RMSNorm its prologue (aiebuild/ops/gemv.py): one launch where
    prefill has five; and the add after down goes to the next layer's QKV prologue
    where that has room (`_residual_in_next_layer`)."""
    e, f, q = shape.hidden, shape.ffn, shape.q_dim
    residual, norm = eltwise.params(rows, e), rmsnorm.params(rows, e, shape.rms_eps)
    add_o = Launch("add", residual, ("o", "x"), ("h",), "add residual")
    normed = [Launch("rmsnorm", norm, ("h", "ffn_norm"), ("hn",))]
    prologue = _ffn_prologue(shape, matmul, types)
    if prologue == gemv.ADD_RMSNORM:
        o_proj = Launch("gemv", gemv.params(rows, q, e, gemv.ROUNDED), ("attn_out", "wo"), ("o",),
                        "gemv O")  # fmt: skip
        gate_up = gemv.params(rows, e, 2 * f, SWIGLU, rmsnorm_eps=shape.rms_eps, add_first=True)
        ffn = [o_proj, Launch("gemv", gate_up, ("o", "x", "ffn_norm", "w_gate_up"), ("a", "h"),
                              "gemv add + RMSNorm + gate+up SwiGLU")]  # fmt: skip
    else:
        o_proj = _matmul(matmul, "gemm O", rows, q, e, ("attn_out", "wo"), "o")
        if prologue == gemv.RMSNORM:
            gate_up = gemv.params(rows, e, 2 * f, SWIGLU, rmsnorm_eps=shape.rms_eps)
            swiglu = [Launch("gemv", gate_up, ("h", "ffn_norm", "w_gate_up"), ("a",),
                             "gemv RMSNorm + gate+up SwiGLU")]  # fmt: skip
        elif matmul == "gemv":
            gate_up = gemv.params(rows, e, 2 * f, SWIGLU)
            swiglu = [*normed, Launch("gemv", gate_up, ("hn", "w_gate_up"), ("a",),
                                      "gemv gate+up SwiGLU")]  # fmt: skip
        else:
            swiglu = [*normed, *_swiglu_gemms(shape, rows)]
        ffn = [o_proj, add_o, *swiglu]
    if _residual_in_next_layer(shape, matmul, types):  # d as that add reads it
        down = Launch("gemv", gemv.params(rows, f, e, gemv.ROUNDED), ("a", "w_down"), ("d",),
                      "gemv down")  # fmt: skip
        return [*ffn, down]
    return [
        *ffn,
        _matmul(matmul, "gemm down", rows, f, e, ("a", "w_down"), "d"),
        Launch("add", residual, ("d", "h"), ("y",), "add residual"),
    ]


def _o_ffn_args(
    shape: ModelShape, rows: int, matmul: str, types: WeightTypes = BF16_TYPES
) -> list[ArgSpec]:
    e, f = shape.hidden, shape.ffn
    prologue = _ffn_prologue(shape, matmul, types)
    # d and h go on to the next layer's projections, or their sum y does
    handed_on = _residual_in_next_layer(shape, matmul, types)
    residual = (
        [_arg("d", (rows, e), OUT, dtype=F32), _arg("h", (rows, e), OUT, dtype=F32)]
        if handed_on
        else [_arg("h", (rows, e), MID, dtype=F32), _arg("d", (rows, e), MID),
              _arg("y", (rows, e), OUT, dtype=F32)]
    )  # fmt: skip
    return [
        _arg("attn_out", (rows, shape.q_dim), IN),
        _arg("x", (rows, e), IN, dtype=F32),
        _matrix("wo", e, shape.q_dim, LAYER + "self_attn.o_proj.weight", types),
        _norm_weight("ffn_norm", e, "post_attention_layernorm.weight", prologue is not None),
        *_swiglu_weights(shape, matmul, types),
        _matrix("w_down", e, f, LAYER + "mlp.down_proj.weight", types),
        # o, rounded to bf16, as fp32 for the add prologue's fifo of fp32 vectors
        _arg("o", (rows, e), MID, dtype=F32 if prologue == gemv.ADD_RMSNORM else "bf16"),
        _arg("hn", (rows, e), MID),
        *(_arg(n, (rows, f), MID) for n in (("g", "u", "a") if matmul == "gemm" else ("a",))),
        *residual,
    ]


def o_ffn(shape: ModelShape, bucket: int) -> ElfSpec:
    launches = tuple(_o_ffn_launches(shape, bucket, "gemm"))
    return _elf(O_FFN, "prefill", bucket, tuple(_o_ffn_args(shape, bucket, "gemm")), launches)


def decode_context(shape: ModelShape, buckets: Iterable[int]) -> int:
    """Positions the device's KV cache holds by default: twice the longest prompt a
    bucket takes (room to answer it), within the model's context."""
    return min(2 * max(buckets), shape.max_positions)


def check_context(shape: ModelShape, buckets: list[int], context: int) -> None:
    """Refuse a KV cache the ELFs cannot hold or use (`ctx=`): it takes the largest
    bucket's prompt, whole blocks of keys, and no more than the model's positions."""
    largest = max(buckets)
    if context % BUCKET_MULTIPLE or not largest <= context <= shape.max_positions:
        raise UserError(
            f"ctx={context}: the KV cache's positions are a multiple of {BUCKET_MULTIPLE} "
            f"from the largest bucket ({largest}) to the model's max_position_embeddings "
            f"({shape.max_positions})"
        )


def kv_cache_shape(shape: ModelShape, context: int) -> tuple[int, ...]:
    """One layer's device-resident KV cache: per KV head its keys then its values, in
    bf16 (the projections write K and V as bf16, so a wider cache would hold the same
    values in twice the DDR bytes the decode attention streams every step). The head
    goes first so that the decode attention's pattern steps from a key block to its
    value block by C*Dh elements: a shim dimension strides at most 2^20 words
    (aiebuild/array/rules.py), which the order [2, Hkv, C, Dh] exceeded at
    Llama-3.2-3B's 4096 positions (Hkv*C*Dh = 4M elements)."""
    return (shape.n_kv_heads, 2, context, shape.head_dim)


def o_gemv_ffn(
    shape: ModelShape, context: int, types: WeightTypes = BF16_TYPES, walk: int | None = None
) -> ElfSpec:
    """Decode attention over the device's KV cache (which the host appended this
    position's K/V to), then the O projection and the FFN: attention goes here, not
    into rms_gemv_rope, because the position's K/V must be in the cache first. With
    `walk`, the attention streams only the cache's first `walk` positions
    (`decode_walks`)."""
    group = shape.n_heads // shape.n_kv_heads
    dims = (shape.n_heads, shape.n_kv_heads, shape.head_dim)
    params = decode_attn.params(*dims, context, walk)
    attend = Launch("decode_attn", params, ("query", KV_CACHE), ("attn_out",), "GQA decode")
    args = (
        _arg("query", (shape.n_kv_heads, group * shape.head_dim + PAD), IN, dtype=F32),
        _arg(KV_CACHE, kv_cache_shape(shape, context), IN),
        _arg("attn_out", (1, shape.q_dim), MID),
        *(arg for arg in _o_ffn_args(shape, 1, "gemv", types) if arg.name != "attn_out"),
    )
    launches = (attend, *_o_ffn_launches(shape, 1, "gemv", types))
    return _elf(O_GEMV_FFN, "decode", 0, args, launches, {WALK: walk} if walk else None)


# The shortest walk a decode ELF of its own gets: below it the saving (a few blocks of
# keys a layer) is less than a cache's worth of ELFs to build and load.
MIN_WALK = 512


def decode_walks(shape: ModelShape, context: int) -> list[int]:
    """The shorter attention walks decode ELFs are compiled for besides the whole cache:
    MIN_WALK doubling, below the context, in whole key blocks. A step at position p
    runs the shortest walk above p, so the attention reads at most twice what it
    needs, not the whole cache (at 1B shapes, context 4096, Q4_0: 2.1 ms a token)."""
    keys = decode_attn.block_keys(shape.head_dim)
    walks = []
    walk = MIN_WALK
    while walk < context:
        if walk % keys == 0:
            walks.append(walk)
        walk *= 2
    return walks


def lm_head_rows(shape: ModelShape, partitions: int = LM_HEAD_PARTITIONS) -> int:
    """Rows of one LM-head partition: the vocabulary padded to whole tiles."""
    per_partition = -(-shape.vocab // partitions)
    return -(-per_partition // TILE) * TILE


def lm_head_gemv(
    shape: ModelShape, partitions: int = LM_HEAD_PARTITIONS, types: WeightTypes = BF16_TYPES
) -> ElfSpec:
    """One GEMV over the partitioned rows (w_lm is [P, rows, E], contiguous): one
    launch spreads them over every column's shim channels, with no reconfiguration
    between partitions."""
    rows, e, weights = lm_head_rows(shape, partitions), shape.hidden, types[LM_HEAD]
    source = "model.embed_tokens.weight" if shape.tie_embeddings else "lm_head.weight"
    args = (
        _arg("x", (1, e), IN),
        _matrix(
            "w_lm",
            rows,
            e,
            source,
            types,
            lead=(partitions,),
            layout="partitioned_rows" if weights == "bf16" else gemv.weight_layout(e, weights),
        ),
        _arg("logits", (partitions, rows), OUT, dtype=F32),
    )
    launch = Launch("gemv", gemv.params(1, e, partitions * rows), ("x", "w_lm"), ("logits",),
                    "LM head")  # fmt: skip
    return _elf(LM_HEAD_GEMV, "lm_head", 0, args, (launch,), {"vocab": shape.vocab})


def model_specs(
    shape: ModelShape,
    buckets: Iterable[int] = DEFAULT_BUCKETS,
    weights: str | WeightTypes = "bf16",
    context: int | None = None,
) -> list[ElfSpec]:
    """Every ELF the runtime needs for this model: prefill ELFs per bucket, then decode,
    whose KV cache holds `context` positions (default: decode_context). `weights`: the
    decode GEMVs' weight type, one for all or per matrix (aiebuild/weights.py; the
    prefill GEMMs read bf16 so far)."""
    types = uniform(weights) if isinstance(weights, str) else weights
    check_tileable(shape)
    buckets = sorted(set(buckets))
    if not buckets or buckets[0] < 1:
        raise UserError(f"prefill buckets must be positive lengths, got {buckets}")
    untileable = [b for b in buckets if b % BUCKET_MULTIPLE]
    if untileable:
        raise UserError(
            f"prefill buckets {untileable} are not multiples of {BUCKET_MULTIPLE} (the prefill "
            f"kernels take rows in blocks of {BUCKET_MULTIPLE}): round them, e.g. "
            f"buckets={','.join(str(-(-b // BUCKET_MULTIPLE) * BUCKET_MULTIPLE) for b in buckets)}"
        )
    too_long = [b for b in buckets if b > shape.max_positions]
    if too_long:
        raise UserError(
            f"prefill buckets {too_long} exceed the model's max_position_embeddings "
            f"({shape.max_positions})"
        )
    specs = []
    for bucket in buckets:
        specs += [rms_gemms_rope(shape, bucket), flash_attn(shape, bucket), o_ffn(shape, bucket)]
    context = decode_context(shape, buckets) if context is None else context
    check_context(shape, buckets, context)
    specs += [
        flash_attn_past(shape, bucket, past, context)
        for past in chunk_pasts(buckets, context)
        for bucket in buckets
        if past + bucket <= context
    ]
    walks = [o_gemv_ffn(shape, context, types, walk) for walk in decode_walks(shape, context)]
    decode = [rms_gemv_rope(shape, types), o_gemv_ffn(shape, context, types), *walks]
    return specs + [*decode, lm_head_gemv(shape, types=types)]
