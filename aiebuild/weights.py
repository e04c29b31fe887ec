"""The decode GEMVs' weight types: what `doit compile weights=` chooses per matrix.

One type for every matrix (bf16, q4_0, q4_1, q8_0), or `gguf`: each matrix in the type
its GGUF file stores it, the default for a model read from a GGUF file. The decode ELFs
serve every layer with one spec, so a matrix (q_proj, ..., down_proj) takes one type
across the layers; the LM head takes its own. A file type the kernels cannot read
(K-quants, IQ types, a matrix whose type changes from layer to layer) is requantized to
Q8_0 from the file's values, the finest block type they read, and the compile says so.
Gate and up count as one matrix here: the decode reads them as one, their rows
interleaved (aiebuild/specs.py, the SwiGLU GEMV), so types that differ between them
requantize both.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from aierun import gguf_model
from aierun.abi import QUANT_DTYPES
from aierun.errors import UserError
from aierun.model import ModelShape

log = structlog.get_logger("aiebuild.weights")

BF16 = "bf16"
WEIGHT_TYPES = (BF16, *QUANT_DTYPES)
GGUF = "gguf"  # each matrix in its file's type
# The decode GEMVs' matrices: a layer's, by their checkpoint name after the layer prefix,
# and the LM head.
LAYER_MATRICES = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)  # fmt: skip
# Read by one decode GEMV (gate and up rows interleaved), so kept in one type.
SWIGLU_PAIR = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
LM_HEAD = "lm_head"
MATRICES = (*LAYER_MATRICES, LM_HEAD)
# File types whose values bf16 holds as the kernels read them (F32 rounds once, as the
# bf16 path does for every safetensors checkpoint).
_FLOAT_TYPES = ("F32", "F16", "BF16")
REQUANTIZED = "q8_0"

WeightTypes = dict[str, str]  # matrix (MATRICES) -> weight type (WEIGHT_TYPES)


def uniform(weights: str) -> WeightTypes:
    """Every matrix in one type."""
    if weights not in WEIGHT_TYPES:
        raise UserError(f"weights={weights} is none of {GGUF}, {', '.join(WEIGHT_TYPES)}")
    return dict.fromkeys(MATRICES, weights)


def choose(weights: str | None, model_dir: Path, shape: ModelShape) -> WeightTypes:
    """The types `weights=` asks for at this model (None: gguf for a model read from a
    GGUF file, else bf16)."""
    from_gguf = gguf_model.gguf_file(model_dir) is not None
    if weights is None:
        weights = GGUF if from_gguf else BF16
    if weights != GGUF:
        return uniform(weights)
    if not from_gguf:
        raise UserError(
            f"weights=gguf keeps each matrix in its GGUF file's type, but {model_dir} is a "
            f"safetensors checkpoint: pass weights= one of {', '.join(WEIGHT_TYPES)}."
        )
    return file_types(gguf_model.tensors(model_dir), shape)


def file_types(index: dict[str, gguf_model.GgufTensor], shape: ModelShape) -> WeightTypes:
    """Each matrix's type as the file stores it, where the kernels read that type."""
    lm_head = "lm_head.weight"
    if lm_head not in index and shape.tie_embeddings:
        lm_head = "model.embed_tokens.weight"
    names = {m: [f"model.layers.{i}.{m}" for i in range(shape.n_layers)] for m in LAYER_MATRICES}
    names[LM_HEAD] = [lm_head]
    gate, up = SWIGLU_PAIR
    names[gate] += names.pop(up)  # one type for both, as if one matrix
    types = {
        matrix: _kernel_type(matrix, {index[n].type for n in ns}) for matrix, ns in names.items()
    }
    return {matrix: types[gate if matrix == up else matrix] for matrix in MATRICES}


def _kernel_type(matrix: str, stored: set[str]) -> str:
    (only,) = stored if len(stored) == 1 else (None,)
    if only in _FLOAT_TYPES:
        return BF16
    if only is not None and only.lower() in QUANT_DTYPES:
        return only.lower()
    why = "a type the NPU kernels do not read, or mixed across layers (or gate and up)"
    log.warning("weights.requantized", matrix=matrix, file_types=sorted(stored),
                to=REQUANTIZED, why=why)  # fmt: skip
    return REQUANTIZED
