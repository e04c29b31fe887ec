"""The decode GEMVs' weight types `weights=` chooses (aiebuild/weights.py)."""

from pathlib import Path

import pytest

from aiebuild import weights
from aierun.errors import UserError
from aierun.gguf_model import GgufTensor
from aierun.model import Checkpoint


def test_a_gguf_model_keeps_its_files_types_by_default(model_dir):
    types = weights.choose(None, model_dir, Checkpoint(model_dir).shape)
    # The shipped SmolLM2 GGUF: every layer matrix Q4_1, the tied embedding Q8_0.
    assert types == {**dict.fromkeys(weights.LAYER_MATRICES, "q4_1"), "lm_head": "q8_0"}


def test_one_type_for_every_matrix_and_gguf_refused_without_a_gguf_file(model_dir, tmp_path):
    shape = Checkpoint(model_dir).shape
    assert set(weights.choose("q8_0", model_dir, shape).values()) == {"q8_0"}
    assert set(weights.choose(None, tmp_path, shape).values()) == {"bf16"}
    with pytest.raises(UserError, match="safetensors checkpoint: pass weights= one of bf16"):
        weights.choose("gguf", tmp_path, shape)
    with pytest.raises(UserError, match="weights=q4_k is none of"):
        weights.uniform("q4_k")


def test_a_type_the_kernels_cannot_read_or_mixed_across_layers_becomes_q8_0(model_dir):
    shape = Checkpoint(model_dir).shape
    index = {}
    for i in range(shape.n_layers):
        for matrix in weights.LAYER_MATRICES:
            kind = "Q6_K" if "down" in matrix else "Q4_0"
            kind = "Q8_0" if "up" in matrix and i == 1 else kind  # mixed: Q4_0 and Q8_0
            index[f"model.layers.{i}.{matrix}"] = GgufTensor(Path("x"), 0, kind, (1, 32), 0)
    index["model.embed_tokens.weight"] = GgufTensor(Path("x"), 0, "F16", (1, 32), 0)
    types = weights.file_types(index, shape)
    assert types["mlp.down_proj.weight"] == "q8_0" and types["mlp.up_proj.weight"] == "q8_0"
    assert types["self_attn.q_proj.weight"] == "q4_0" and types["lm_head"] == "bf16"


@pytest.mark.parametrize(
    ("gate", "up", "both"), [("Q4_1", "Q4_0", "q8_0"), ("Q4_0", "Q4_0", "q4_0")]
)
def test_gate_and_up_take_one_type(model_dir, gate, up, both):
    """The decode reads gate and up as one interleaved matrix: types that differ become
    Q8_0 for both, and one they share is kept."""
    shape = Checkpoint(model_dir).shape
    kinds = {"mlp.gate_proj.weight": gate, "mlp.up_proj.weight": up}
    index = {
        f"model.layers.{i}.{matrix}": GgufTensor(
            Path("x"), 0, kinds.get(matrix, "Q4_1"), (1, 32), 0
        )
        for i in range(shape.n_layers)
        for matrix in weights.LAYER_MATRICES
    }
    index["model.embed_tokens.weight"] = GgufTensor(Path("x"), 0, "Q8_0", (1, 32), 0)
    types = weights.file_types(index, shape)
    assert types["mlp.gate_proj.weight"] == types["mlp.up_proj.weight"] == both
    assert types["mlp.down_proj.weight"] == "q4_1" and list(types) == list(weights.MATRICES)
