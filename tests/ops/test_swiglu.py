"""SwiGLU's decode as one GEMV (aiebuild/ops/gemv.py "swiglu" epilogue): gate and up
rows interleaved at preload (aierun/abi.py), and the fused launch's values against the
two GEMVs and silu_mul it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from aiebuild import specs
from aiebuild.ops import gemv
from aierun.abi import SWIGLU, SWIGLU_GROUP, interleave_rows, split_layout
from aierun.ops import OPS, quant
from aierun.ops.numerics import to_bf16
from tests.ops.test_quant import TYPES, blocks_of
from tests.sim.test_designs_simulated import SHAPE

ROWS, K = 64, 512


def split(fused: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of each part back from rows interleaved SWIGLU_GROUP at a time."""
    turns = fused.reshape(-1, 2, SWIGLU_GROUP, *fused.shape[1:])
    return tuple(turns[:, i].reshape(-1, *fused.shape[1:]) for i in range(2))


def as_device(blocks: np.ndarray, name: str, epilogue: str | None) -> quant.Blocks:
    """GGUF blocks through the GEMV's device layout, read back as the emulator does."""
    layout = gemv.weight_layout(K, name, epilogue)
    shape = gemv.weight_shape(len(blocks), K, name)
    data = quant.quantized_weight(blocks, name, layout, shape)
    return quant.from_device(data, name, *quant.parse_layout(layout))


def test_interleaved_rows_and_layout_round_trip():
    gate, up = (np.arange(ROWS * 4).reshape(ROWS, 4) + offset for offset in (0, 10_000))
    fused = interleave_rows([gate, up], SWIGLU_GROUP)
    assert np.array_equal(fused[:SWIGLU_GROUP], gate[:SWIGLU_GROUP])
    assert np.array_equal(fused[SWIGLU_GROUP : 2 * SWIGLU_GROUP], up[:SWIGLU_GROUP])
    assert all(np.array_equal(a, b) for a, b in zip(split(fused), (gate, up), strict=True))
    assert split_layout(gemv.weight_layout(K, "q4_1", SWIGLU)) == (SWIGLU_GROUP, "tiles32x256")
    assert split_layout(gemv.weight_layout(K, "q4_1")) == (None, "tiles16x256")


@pytest.mark.parametrize("name", TYPES)
def test_interleaved_blocks_round_trip_through_the_device_layout(name):
    """A 32-row record holds 16 gate rows then the same 16 up rows: read back, the
    values split into gate's and up's exactly."""
    parts = [blocks_of(name, ROWS, K, seed) for seed in (3, 4)]
    back = as_device(interleave_rows(parts, SWIGLU_GROUP), name, SWIGLU)
    for part, q, d in zip(parts, split(back.q), split(back.d), strict=True):
        values = quant.from_gguf(part, name)
        assert np.array_equal(q, values.q) and np.array_equal(d, values.d)


@pytest.mark.parametrize("name", ["bf16", *TYPES])
def test_the_fused_gemv_is_two_gemvs_then_silu_mul(name):
    """One GEMV over gate and up interleaved with the SwiGLU epilogue gives bit for bit
    what the separate GEMVs (their outputs written as bf16) and silu_mul give."""
    x = to_bf16(np.random.default_rng(2).standard_normal((1, K), np.float32)).astype(np.float32)
    kind = "q8_0" if name == "bf16" else name
    parts = [blocks_of(kind, ROWS, K, seed) for seed in (3, 4)]
    if name == "bf16":  # bf16 rows of the same values
        parts = [to_bf16(quant.dequantized(quant.from_gguf(p, kind))) for p in parts]

    def weight(w: np.ndarray, epilogue: str | None) -> np.ndarray | quant.Blocks:
        return w.astype(np.float32) if name == "bf16" else as_device(w, name, epilogue)

    fused = weight(interleave_rows(parts, SWIGLU_GROUP), SWIGLU)
    (a,) = OPS["gemv"]({"epilogue": SWIGLU}, x, fused)
    g, u = (to_bf16(OPS["gemv"]({}, x, weight(p, None))[0]).astype(np.float32) for p in parts)
    (expected,) = OPS["silu_mul"]({}, g, u)
    assert a.shape == (1, ROWS) and np.array_equal(to_bf16(a), to_bf16(expected))
    # Rounding g and u matters: silu_mul of the fp32 dot products differs.
    (wide,) = OPS["gemv"]({}, x, weight(interleave_rows(parts, SWIGLU_GROUP), None))
    gate, up = split(wide.reshape(-1))
    (unrounded,) = OPS["silu_mul"]({}, gate, up)
    assert not np.array_equal(to_bf16(a[0]), to_bf16(unrounded))


@pytest.mark.parametrize("weights", ["bf16", "q4_1"])
def test_decode_runs_gate_up_and_silu_mul_as_one_launch_prefill_as_three(weights):
    by_name = {s.name: s for s in specs.model_specs(SHAPE, (64,), weights)}
    decode, prefill = by_name["o_gemv_ffn"], by_name["o_ffn"]
    (fused,) = [launch for launch in decode.launches if "a" in launch.outputs]
    assert fused.op == "gemv" and fused.params["epilogue"] == SWIGLU
    assert fused.params["N"] == 2 * SHAPE.ffn and fused.outputs == ("a", "h")
    assert fused.inputs == ("o", "x", "ffn_norm", "w_gate_up")  # the add and RMSNorm before
    assert fused.params["prologue"] == "add_rmsnorm" and decode.arg("ffn_norm").dtype == "f32"
    assert not {"rmsnorm", "silu_mul"} & {launch.op for launch in decode.launches}
    # the add after down is the next layer's QKV prologue (test_gemv_fusions.py)
    assert "add" not in [launch.op for launch in decode.launches]
    w = decode.arg("w_gate_up")
    assert w.source.count("+") == 1 and w.dtype == weights
    assert w.shape == gemv.weight_shape(2 * SHAPE.ffn, SHAPE.hidden, weights)
    assert [launch.op for launch in prefill.launches].count("silu_mul") == 1
    assert {"w_gate", "w_up", "g", "u"} <= {arg.name for arg in prefill.args}
