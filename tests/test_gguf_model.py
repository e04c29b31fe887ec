"""GGUF files as models: the tensor index, blocks and values, the derived directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from aierun import default_model, gguf_model
from aierun.errors import UserError
from aierun.model import Checkpoint, resolve_model

Q_PROJ = "model.layers.3.self_attn.q_proj.weight"
K_PROJ = "model.layers.3.self_attn.k_proj.weight"


def llama_cpp_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`, written from its formula."""
    return (
        rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def test_undoing_the_row_permutation_restores_the_checkpoint_rows():
    rows = np.arange(24 * 3).reshape(24, 3)
    for heads in (1, 3, 6):
        assert np.array_equal(gguf_model._unpermute(llama_cpp_permute(rows, heads), heads), rows)
    assert not np.array_equal(llama_cpp_permute(rows, 3), rows)


def test_the_default_model_runs_from_its_gguf_file(model_dir):
    """No converted weights: the directory holds the package's GGUF and its metadata."""
    assert not list(model_dir.glob("*.safetensors"))
    assert (model_dir / default_model.GGUF_FILE).is_file()
    checkpoint = Checkpoint(model_dir)
    assert checkpoint.stored_type(Q_PROJ) == "Q4_1"
    assert checkpoint.stored_type("lm_head.weight") == "Q8_0"  # the tied embedding
    assert checkpoint.stored_type("model.norm.weight") == "F32"


def test_blocks_are_the_files_own_and_dequantize_to_the_tensor(model_dir):
    checkpoint = Checkpoint(model_dir)
    blocks = checkpoint.blocks(K_PROJ, "Q4_1")
    values = dequantize(blocks, gguf.GGMLQuantizationType.Q4_1)
    kv, e = checkpoint.shape.kv_dim, checkpoint.shape.hidden
    assert blocks.dtype == np.uint8 and values.shape == (kv, e)
    # The bf16 tensor is those values rounded: blocks and values agree row for row.
    tensor = checkpoint.tensor(K_PROJ).astype(np.float32)
    assert np.allclose(tensor, values, rtol=2**-8, atol=0)
    # In the file the rows are permuted: the index undoes that on blocks as on values.
    entry = gguf_model.tensors(model_dir)[K_PROJ]
    stored = dequantize(entry.raw(), gguf.GGMLQuantizationType.Q4_1)
    heads = checkpoint.shape.n_kv_heads
    assert np.array_equal(llama_cpp_permute(values, heads), stored)


def test_blocks_of_another_type_are_quantized_from_the_values(model_dir):
    checkpoint = Checkpoint(model_dir)
    values = gguf_model.tensors(model_dir)[Q_PROJ].read()
    q8 = dequantize(checkpoint.blocks(Q_PROJ, "Q8_0"), gguf.GGMLQuantizationType.Q8_0)
    # Q8_0 holds Q4_1's 16 levels per block nearly exactly (its scale is max/127).
    assert np.abs(q8 - values).max() <= np.abs(values).max() / 127
    with pytest.raises(
        UserError,
        match=r"Q2_K, which the NPU kernels do not read: requantize .* to Q4_0, Q4_1, Q8_0",
    ):
        checkpoint.blocks(Q_PROJ, "Q2_K")


@pytest.fixture
def fast_metadata(monkeypatch, model_dir):
    """The config and tokenizer copied from the default model instead of derived by
    transformers (the slow part): what is tested here is the index and its reuse."""
    calls = []

    def copied(_gguf_file: Path, out: Path) -> dict:
        calls.append(out)
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(model_dir / name, out / name)
        return json.loads((model_dir / "config.json").read_text())

    monkeypatch.setattr(gguf_model, "_write_hf_files", copied)
    return calls


def test_a_gguf_file_is_a_model_derived_once(tmp_path, model_dir, fast_metadata):
    file = tmp_path / "mine.gguf"
    shutil.copy2(model_dir / default_model.GGUF_FILE, file)
    models = tmp_path / "models"
    derived = resolve_model(str(file), models)
    assert derived.parent == models / "gguf" and len(fast_metadata) == 1
    assert resolve_model(str(tmp_path), models) == derived  # a folder holding one GGUF
    assert len(fast_metadata) == 1  # reused, not derived again
    checkpoint = Checkpoint(derived)
    assert checkpoint.name == "mine"
    reference = Checkpoint(model_dir)
    assert np.array_equal(checkpoint.tensor(Q_PROJ), reference.tensor(Q_PROJ))
    os.utime(file, ns=(0, 0))  # a copy that lost its mtime: the same bytes, still current
    assert resolve_model(str(file), models) == derived and len(fast_metadata) == 1
    with file.open("r+b") as stream:  # the file changed: its directory is derived again
        stream.seek(-1, os.SEEK_END)
        last = stream.read(1)
        stream.seek(-1, os.SEEK_END)
        stream.write(bytes([last[0] ^ 1]))
    assert resolve_model(str(file), models) == derived and len(fast_metadata) == 2


def test_a_gguf_that_moved_away_is_named(tmp_path, model_dir, fast_metadata):
    file = tmp_path / "gone.gguf"
    shutil.copy2(model_dir / default_model.GGUF_FILE, file)
    derived = resolve_model(str(file), tmp_path / "models")
    file.unlink()
    with pytest.raises(UserError, match=r"reads its weights from .*gone\.gguf, which is gone"):
        Checkpoint(derived)


def write_gguf(path: Path, arch: str) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unsupported_architecture_is_named_before_anything_is_made(tmp_path):
    file = write_gguf(tmp_path / "other.gguf", "gpt2")
    with pytest.raises(UserError, match=r"holds a 'gpt2' model; GGUF files of \['llama'\]"):
        resolve_model(str(file), tmp_path / "models")
    assert not list((tmp_path / "models").rglob("config.json"))


def test_a_folder_of_several_gguf_files_asks_for_one(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        write_gguf(tmp_path / name, "llama")
    with pytest.raises(UserError, match=r"several GGUF files \(a\.gguf, b\.gguf\)"):
        resolve_model(str(tmp_path), tmp_path / "models")
