"""GGUF block weights (aierun/ops/quant.py): the values against the gguf package's
dequantization, the device layout, the GEMV's sums, and the compile choice."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from aiebuild import specs
from aiebuild.ops import gemv
from aierun.errors import UserError
from aierun.ops import quant
from aierun.ops.numerics import to_bf16
from tests.sim.test_designs_simulated import SHAPE

TYPES = ["q4_0", "q4_1", "q8_0"]


def blocks_of(name: str, rows: int = 32, k: int = 512, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((rows, k), np.float32)
    return gguf.quants.quantize(values, gguf.GGMLQuantizationType[name.upper()])


@pytest.mark.parametrize("name", TYPES)
def test_block_values_are_ggufs_dequantization(name):
    blocks = blocks_of(name)
    reference = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name.upper()])
    assert np.array_equal(quant.dequantized(quant.from_gguf(blocks, name)), reference)


@pytest.mark.parametrize("name", TYPES)
def test_device_layout_keeps_every_value_and_tiles_whole_bursts(name):
    blocks = blocks_of(name)
    device = quant.to_device(blocks, name, gemv.TN, gemv.TK_MAX)
    back, there = quant.from_gguf(blocks, name), quant.from_device(device, name, 16, 256)
    assert np.array_equal(back.q, there.q) and np.array_equal(back.d, there.d)
    assert (back.m is None) == (there.m is None)
    assert back.m is None or np.array_equal(back.m, there.m)
    # The emulator keeps the decoded quants of every weight: one byte each, not eight.
    assert back.q.dtype == there.q.dtype == np.int8
    assert gemv.record_bytes(512, name, gemv.TN) % 512 == 0  # a core step reads whole shim bursts


@pytest.mark.parametrize("name", TYPES)
def test_gemv_sums_the_exact_block_values(name):
    blocks = blocks_of(name)
    x = to_bf16(np.random.default_rng(1).standard_normal(512, np.float32))
    exact = quant.dequantized(quant.from_gguf(blocks, name)).astype(np.float64) @ x
    ours = quant.gemv(x, quant.from_gguf(blocks, name))
    # fp32 lane sums of 512 terms: a few fp32 roundings of the partial sums' scale.
    bound = 2**-20 * np.abs(quant.dequantized(quant.from_gguf(blocks, name)) * x).sum(1)
    assert np.all(np.abs(ours - exact) <= bound)


def test_the_weight_type_is_in_the_decode_specs_and_so_their_content():
    plain = {s.instance: s for s in specs.model_specs(SHAPE, (64,))}
    q4 = {s.instance: s for s in specs.model_specs(SHAPE, (64,), "q4_0")}
    decode = {"rms_gemv_rope", "o_gemv_ffn", "lm_head_gemv"}
    for name in decode:
        assert plain[name].to_json() != q4[name].to_json()
        weights = [
            a for a in q4[name].args if a.role == "weight" and a.source and "norm" not in a.source
        ]
        assert weights and all(a.dtype == "q4_0" for a in weights)
    assert all(plain[n].to_json() == q4[n].to_json() for n in plain.keys() - decode)


def test_an_unsupported_weight_type_is_refused_by_name():
    with pytest.raises(UserError, match="q4_k"):
        specs.model_specs(SHAPE, (64,), "q4_k")
    with pytest.raises(UserError, match="q4_k"):
        quant.qtype("q4_k")


def test_a_checkpoint_refuses_a_block_type_the_kernels_cannot_read(model_dir):
    from aierun.model import Checkpoint

    name = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(UserError, match=r"(?i)up_proj.*q4_k.*llama\.cpp.*weights=bf16"):
        Checkpoint(model_dir).blocks(name, "q4_k")


def test_a_checkpoint_quantizes_with_ggufs_reference(model_dir):
    from aierun.model import Checkpoint

    checkpoint = Checkpoint(model_dir)
    name = "model.layers.0.self_attn.k_proj.weight"
    values = np.asarray(checkpoint.tensor(name), np.float32)
    expected = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_1)
    assert np.array_equal(checkpoint.blocks(name, "q4_1"), expected)
