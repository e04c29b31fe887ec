"""Decode's fused GEMV launches (aiebuild/ops/gemv.py) compute what the launches they
replace computed, value for value: the RMSNorm prologue what an rmsnorm launch wrote
(bf16) and a GEMV then read, the add prologue what an add launch wrote before that,
and the three-weight launch what three GEMVs wrote."""

from __future__ import annotations

import numpy as np
import pytest

from aiebuild import specs
from aiebuild.ops import gemv
from aierun.ops import OPS
from aierun.ops.numerics import to_bf16
from tests.ops.test_quant import blocks_of
from tests.ops.test_swiglu import as_device
from tests.sim.test_designs_simulated import SHAPE

K, EPS = 512, 1e-5


def bf16_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return to_bf16(rng.standard_normal(shape, np.float32)).astype(np.float32)


@pytest.mark.parametrize("weights", ["bf16", "q4_0"])
def test_the_rmsnorm_prologue_is_the_rmsnorm_launch_then_the_gemv(weights):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, K), np.float32) * 4  # the fp32 residual stream
    norm = bf16_values(rng, (K,))  # the weight, widened exactly to fp32 at preload
    w = (
        bf16_values(rng, (64, K))
        if weights == "bf16"
        else as_device(blocks_of(weights, rows=64, k=K), weights, None)
    )
    fused = gemv.params(1, K, 64, rmsnorm_eps=EPS)
    (normed,) = OPS["rmsnorm"]({"eps": EPS}, x, norm)
    (expected,) = OPS["gemv"](gemv.params(1, K, 64), to_bf16(normed).astype(np.float32), w)
    (ours,) = OPS["gemv"](fused, x, norm, w)
    assert np.array_equal(ours, expected)
    (unnormed,) = OPS["gemv"](gemv.params(1, K, 64), to_bf16(x).astype(np.float32), w)
    assert not np.allclose(ours, unnormed)  # the prologue did something


def test_one_launch_over_three_weights_writes_what_three_gemvs_wrote():
    rng = np.random.default_rng(4)
    x = bf16_values(rng, (1, K))
    weights = [bf16_values(rng, (rows, K)) for rows in (128, 32, 32)]
    outputs = OPS["gemv"](gemv.params(1, K, 192), x, *weights)
    assert len(outputs) == 3
    for w, ours in zip(weights, outputs, strict=True):
        (alone,) = OPS["gemv"](gemv.params(1, K, len(w)), x, w)
        assert np.array_equal(ours, alone)


def test_decode_projections_are_one_launch_with_the_norm_and_prefill_keeps_four():
    by_name = {s.name: s for s in specs.model_specs(SHAPE, (64,), "q4_0")}
    decode, prefill = by_name["rms_gemv_rope"], by_name["rms_gemms_rope"]
    (fused,) = [launch for launch in decode.launches if launch.op == "gemv"]
    assert fused.inputs == ("d", "h", "attn_norm", "wq", "wk", "wv")  # x = d + h first
    assert fused.outputs == ("q", "k", "v", "x")
    assert fused.params["prologue"] == "add_rmsnorm" and decode.arg("attn_norm").dtype == "f32"
    assert "xn" not in {arg.name for arg in decode.args}  # kept in core memory
    assert [launch.op for launch in prefill.launches][:4] == ["rmsnorm", "gemm", "gemm", "gemm"]
    assert prefill.arg("attn_norm").dtype == "bf16"


def test_a_core_without_room_for_the_prologue_keeps_the_rmsnorm_launch():
    """Llama-3.1-8B's hidden 4096 in bf16: x, the weight and xn beside two 32-row steps
    of gate+up exceed a core's 64 KiB, so decode normalizes in a launch of its own."""
    from aierun.model import ModelShape
    from tools.random_llama import CONFIGS

    shape = ModelShape.from_config(CONFIGS["Llama-3.1-8B"])
    decode = next(s for s in specs.model_specs(shape, (64,), "bf16") if s.name == "o_gemv_ffn")
    ops = [launch.op for launch in decode.launches]
    assert "rmsnorm" in ops and decode.arg("ffn_norm").dtype == "bf16"


def test_the_add_prologue_is_the_add_launch_then_the_rmsnorm_prologue():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, K), np.float32) * 4
    norm, w = bf16_values(rng, (K,)), bf16_values(rng, (64, K))
    # o as the O GEMV writes it for the prologue: rounded to bf16, kept as fp32
    w_o, attn = bf16_values(rng, (K, K)), bf16_values(rng, (1, K))
    (o,) = OPS["gemv"](gemv.params(1, K, K, gemv.ROUNDED), attn, w_o)
    (plain,) = OPS["gemv"](gemv.params(1, K, K), attn, w_o)
    assert np.array_equal(o, to_bf16(plain).astype(np.float32))
    (h,) = OPS["add"]({}, o, x)
    (expected,) = OPS["gemv"](gemv.params(1, K, 64, rmsnorm_eps=EPS), h, norm, w)
    fused = gemv.params(1, K, 64, rmsnorm_eps=EPS, add_first=True)
    ours, sums = OPS["gemv"](fused, o, x, norm, w)
    assert np.array_equal(sums, h) and np.array_equal(ours, expected)


def test_the_residual_add_after_down_is_the_next_layers_qkv_prologue():
    """o_gemv_ffn hands on d (rounded to bf16, as fp32) and h; the next layer's QKV
    prologue adds them, and writes the sum x the add launch wrote as y."""
    by_name = {s.name: s for s in specs.model_specs(SHAPE, (64,), "q4_0")}
    ffn, proj = by_name["o_gemv_ffn"], by_name["rms_gemv_rope"]
    assert "add" not in {launch.op for launch in ffn.launches}
    down = ffn.launches[-1]
    assert down.outputs == ("d",) and down.params["epilogue"] == gemv.ROUNDED
    handed_on = {a.name: a.dtype for a in ffn.args if a.role.name == "OUTPUT"}
    taken = {a.name: a.dtype for a in proj.args if a.role.name == "INPUT" and a.name != "rope"}
    assert handed_on == taken == {"d": "f32", "h": "f32"}
    rng = np.random.default_rng(6)
    h = rng.standard_normal((1, K), np.float32) * 4
    a, w_down = bf16_values(rng, (1, K)), bf16_values(rng, (K, K))
    norm, wq, wk = bf16_values(rng, (K,)), bf16_values(rng, (64, K)), bf16_values(rng, (32, K))
    (d,) = OPS["gemv"](gemv.params(1, K, K), a, w_down)  # bf16, as the add launch read it
    (y,) = OPS["add"]({}, to_bf16(d), h)
    expected = OPS["gemv"](gemv.params(1, K, 96, rmsnorm_eps=EPS), y, norm, wq, wk)
    (d_rounded,) = OPS["gemv"](gemv.params(1, K, K, gemv.ROUNDED), a, w_down)
    fused = gemv.params(1, K, 96, rmsnorm_eps=EPS, add_first=True)
    *ours, x = OPS["gemv"](fused, d_rounded, h, norm, wq, wk)
    assert np.array_equal(x, y)
    assert all(np.array_equal(o, e) for o, e in zip(ours, expected, strict=True))


def test_without_room_for_the_add_prologue_decode_keeps_the_add_after_down():
    """Llama-3.1-8B's hidden 4096: d, h, the norm weight and their sum do not fit a
    core beside the QKV GEMV's steps, so o_gemv_ffn still writes y."""
    from aierun.model import ModelShape
    from tools.random_llama import CONFIGS

    shape = ModelShape.from_config(CONFIGS["Llama-3.1-8B"])
    by_name = {s.name: s for s in specs.model_specs(shape, (64,), "q4_0")}
    assert by_name["o_gemv_ffn"].launches[-1].op == "add"
    assert by_name["rms_gemv_rope"].launches[0].inputs[0] == "x"


def test_decode_with_the_add_launch_instead_gives_the_same_logits(
    tmp_path, checkpoint, model_dir, session, monkeypatch
):
    """The runtime's other path: where the add after down stays a launch, o_gemv_ffn
    hands on y, the next layer takes it as x, and the logits are the fold's, bit for
    bit (the same fp32 sums)."""
    from aiebuild.tasks import BuildConfig, compile_all
    from aierun.artifacts import ArtifactSet
    from aierun.devices.emu import EmuDevice
    from aierun.session import Session

    ids = checkpoint.encode_prompt("What is the capital of Japan?")

    def logits(run: Session) -> list[np.ndarray]:
        steps = [run.prefill(ids)]
        steps += [run.decode(int(np.argmax(steps[-1]))) for _ in range(3)]
        return steps

    assert session.spec("o_gemv_ffn").launches[-1].op == "gemv"  # the fold
    folded = logits(session)
    monkeypatch.setattr(specs, "_residual_in_next_layer", lambda shape, matmul, types: False)
    manifest = compile_all(BuildConfig(tmp_path, str(model_dir), (64,), "emu"))
    with Session(checkpoint, ArtifactSet.open(manifest), EmuDevice()) as unfolded:
        unfolded.prepare()
        assert unfolded.spec("o_gemv_ffn").launches[-1].op == "add"
        assert all(np.array_equal(a, b) for a, b in zip(folded, logits(unfolded), strict=True))
