"""Every op design, at small shapes, through the dataflow model with the kernels
compiled for this machine, against emu on the same inputs (aiebuild/sim/run.py);
and a mutated access pattern and a mutated kernel are each caught."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from aiebuild import ops, placed
from aiebuild.ops import decode_attn, kv_store
from aiebuild.ops.common import contiguous
from aiebuild.sim import dataflow
from aiebuild.sim.compare import DEFAULT_TOLERANCE, compare
from aiebuild.sim.run import Capture, HostKernels, capture_calls, simulate_elf
from aiebuild.specs import model_specs
from aierun.abi import ArgSpec, ElfSpec, Launch, Role, parse_binding
from aierun.artifacts import ArtifactSet
from aierun.devices.emu import EmuDevice
from aierun.model import Checkpoint, ModelShape
from aierun.ops.decode_attn import PAD, query_rows

SHAPE = ModelShape(
    n_layers=1, hidden=128, n_heads=4, n_kv_heads=2, head_dim=64, ffn=256, vocab=1000,
    rms_eps=1e-5, rope_theta=10000.0, rope_scaling=None, tie_embeddings=True,
    max_positions=256,
)  # fmt: skip
BUCKET = 64


def one_launch_specs(weights: str = "bf16") -> dict[str, ElfSpec]:
    """Each distinct launch of the model's ELFs as an ELF of its own: what it reads is
    an input, what it writes an output."""
    found: dict[str, ElfSpec] = {}
    for spec in model_specs(SHAPE, (BUCKET,), weights):
        for launch in spec.launches:
            reads = [parse_binding(b)[0] for b in launch.inputs]
            writes = [parse_binding(b)[0] for b in launch.outputs]
            args = tuple(
                replace(spec.arg(name), role=Role.INPUT if name in reads else Role.OUTPUT)
                for name in dict.fromkeys([*reads, *writes])
            )
            key = f"{launch.op}-{spec.name}-{launch.label or launch.op}".replace(" ", "_")
            one = ElfSpec(key, spec.phase, spec.bucket, args, (launch,))
            same = any(o.launches[0].params == launch.params and o.args == args
                       for o in found.values())  # fmt: skip
            if not same:
                found[key] = one
    return found


SPECS = one_launch_specs()


def random_inputs(spec: ElfSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Normal values; decode attention's query rows carry a length of `2/3` of its
    context (a partial key block, and stale positions after it)."""
    rng = np.random.default_rng(seed)
    inputs = {
        arg.name: rng.standard_normal(arg.shape, np.float32).astype(arg.np_dtype)
        for arg in spec.args_with(Role.INPUT)
    }
    (launch, *_) = spec.launches
    if launch.op == "decode_attn":
        query = inputs["query"]
        query_rows(query[:, :-PAD].copy(), len(query), 2 * launch.params["context"] // 3 + 1, query)
    return inputs


def on_emu(spec: ElfSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    device = EmuDevice()
    buffers = {arg.name: device.alloc(arg, arg.name) for arg in spec.args}
    for name, values in inputs.items():
        buffers[name].write(values)
    device.run(device.load(spec, {}), spec, buffers)
    return {a.name: buffers[a.name].host for a in spec.args_with(Role.OUTPUT)}


def written(spec: ElfSpec, name: str, values: np.ndarray) -> np.ndarray:
    """The part of an output the launch writes (one slice for an LM-head partition)."""
    (launch,) = spec.launches
    index = dict(parse_binding(b) for b in launch.outputs)[name]
    return values if index is None else values[index]


def simulated(spec: ElfSpec, inputs, kernels: HostKernels | None = None):
    kernels = kernels or HostKernels(ops.kernel_objects(spec))
    outputs, _ = simulate_elf(Capture(spec, inputs, {}), kernels)
    return outputs


# How far each op's kernel may be from emu, and why (measured on these inputs):
# - rmsnorm, rope, add, silu_mul, kv_store: the same fp32 operations per element in the same
#   order (emu models the kernels' lane-order sums and bf16 exp), so bit-exact;
# - gemm, gemv: the fp32 dot products are summed in the mmul / vector lanes' order,
#   not BLAS's; the rounded bf16 result can then land one bf16 step away;
# - flash_attn, decode_attn: the online softmax rescales its running sums block by block (emu
#   normalizes once), so values near zero differ in many bf16 steps: bounded
#   relative to the output's scale, and by the cosine.
MAX_ULP = {"rmsnorm": 0, "rope": 0, "add": 0, "silu_mul": 0, "kv_store": 0, "gemm": 1, "gemv": 1}
FLASH_RELATIVE, FLASH_COSINE = 2**-6, 0.99999


@pytest.mark.parametrize("key", sorted(SPECS))
def test_op_design_simulated_matches_emu(key):
    spec = SPECS[key]
    op = spec.launches[0].op
    inputs = random_inputs(spec)
    expected, ours = on_emu(spec, inputs), simulated(spec, inputs)
    for name in expected:
        diff = compare(written(spec, name, ours[name]), written(spec, name, expected[name]))
        assert diff.nonfinite == 0, (name, diff)
        if op in ("flash_attn", "decode_attn"):
            assert diff.max_abs <= FLASH_RELATIVE * diff.scale and diff.cosine >= FLASH_COSINE
        else:
            assert diff.max_ulp <= MAX_ULP[op], (name, diff)


def far_from_emu(spec: ElfSpec, inputs, kernels: HostKernels | None = None) -> bool:
    """Whether the model, run on `inputs`, fails or visibly differs from emu."""
    try:
        ours = simulated(spec, inputs, kernels)
    except dataflow.DataflowError:
        return True
    expected = on_emu(spec, inputs)
    diffs = [compare(written(spec, n, ours[n]), written(spec, n, expected[n])) for n in expected]
    return any(d.nonfinite or d.max_ulp > 1 for d in diffs)


def test_an_access_pattern_one_tile_off_is_caught(monkeypatch):
    """The first fill of the gemm launch starts one fifo object (one tile) later."""
    spec = SPECS["gemm-rms_gemms_rope-gemm_Q"]
    record = ops.record

    def shifted(spec, launch):
        program = record(spec, launch)
        fill = next(t for t in program.runtime.transfers() if t.is_fill)
        tap = fill.tap
        fill.tap = type(tap)(tap.tensor_dims, tap.offset + fill.handle.fifo.size, tap.sizes,
                             tap.strides)  # fmt: skip
        return program

    inputs = random_inputs(spec)
    assert not far_from_emu(spec, inputs)
    monkeypatch.setattr(ops, "record", shifted)
    assert far_from_emu(spec, inputs)


def test_kv_store_writing_rows_instead_of_heads_is_caught(monkeypatch):
    """The cache's drain pattern forgets the per-head layout and writes rows as they
    come (the rows layout flash_attn reads, not the one decode attention reads)."""
    spec = SPECS["kv_store-rms_gemms_rope-KV_cache"]
    inputs = random_inputs(spec)
    assert not far_from_emu(spec, inputs)

    def as_rows(cache, first_row, objects, rows):
        heads, _, dim = cache.shape
        return contiguous(cache.shape, first_row * heads * dim, objects * rows * heads * dim)

    monkeypatch.setattr(kv_store, "_scatter", as_rows)
    assert far_from_emu(spec, inputs)


def test_kv_store_moves_a_long_block_in_phases_within_the_shims_limits():
    """One column with 128 objects to move: two phases of 64 pattern iterations."""
    params = {"kv_heads": 2, "head_dim": 64, "rows": 2048, "columns": 1, "core_rows": 1}
    launch = Launch("kv_store", params, ("k", "v"), ("k_cache", "v_cache"))
    rows = [ArgSpec(n, (2048, 128), "bf16", Role.INPUT) for n in ("k", "v")]
    caches = [ArgSpec(n, (2, 2048, 64), "f32", Role.OUTPUT) for n in ("k_cache", "v_cache")]
    args = (*rows, *caches)
    spec = ElfSpec("kv_store_long", "prefill", 2048, args, (launch,))
    program = ops.record(spec, launch)
    drains = [t.tap.sizes[0] for t in program.runtime.transfers() if not t.is_fill]
    assert drains == [64] * 4  # K and V, two phases each
    (check,) = placed.check_specs([spec])
    assert check.report.violations == []
    assert not far_from_emu(spec, random_inputs(spec))


def test_a_kernel_with_a_wrong_loop_bound_is_caught(tmp_path):
    """gemv.cc's inner loop stops one vector short of the tile."""
    spec = SPECS["gemv-rms_gemv_rope-gemv_QKV"]
    (obj,) = ops.kernel_objects(spec)
    source = obj.source.read_text()
    loop = "k < AIEK_TK; k += LANES"
    assert loop in source, "the gemv kernel changed: update the mutation"
    mutated = tmp_path / obj.source.name
    mutated.write_text(source.replace(loop, "k < AIEK_TK - LANES; k += LANES"))
    wrong = replace(obj, source=mutated)
    inputs = random_inputs(spec)
    assert not far_from_emu(spec, inputs)
    assert far_from_emu(spec, inputs, HostKernels([wrong]))


def test_an_all_zero_output_is_a_failed_comparison_not_a_pass():
    """A call captured on zeros (e.g. prepare's warm-up) would match anything that
    writes zeros: the comparison refuses it instead of passing it."""
    zeros, values = np.zeros(64, np.float32), np.linspace(-1, 1, 64, dtype=np.float32)
    assert DEFAULT_TOLERANCE.problem(compare(zeros, zeros)) is not None
    assert DEFAULT_TOLERANCE.problem(compare(values, values)) is None


@pytest.mark.slow
def test_capture_takes_a_real_call_of_every_elf_not_the_warm_up(model_dir, emu_manifest):
    captured = capture_calls(Checkpoint(model_dir), emu_manifest)
    assert set(captured) == set(ArtifactSet.open(emu_manifest).instances)
    for capture in captured.values():
        assert all(np.abs(v).max() > 0 for v in capture.outputs.values()), capture.spec.instance


def decode_attn_spec(context: int, walk: int | None = None) -> ElfSpec:
    params = decode_attn.params(4, 2, 64, context, walk)
    launch = Launch("decode_attn", params, ("query", "kv_cache"), ("attn_out",))
    args = (ArgSpec("query", (2, 2 * 64 + PAD), "f32", Role.INPUT),
            ArgSpec("kv_cache", (2, 2, context, 64), "bf16", Role.INPUT),
            ArgSpec("attn_out", (1, 4 * 64), "bf16", Role.OUTPUT))  # fmt: skip
    return ElfSpec("decode_attn_long", "decode", 0, args, (launch,))


def within_flash_bound(spec: ElfSpec, inputs, kernels: HostKernels | None = None) -> bool:
    diff = compare(simulated(spec, inputs, kernels)["attn_out"], on_emu(spec, inputs)["attn_out"])
    return diff.max_abs <= FLASH_RELATIVE * diff.scale and diff.cosine >= FLASH_COSINE


def test_decode_attn_walks_a_long_context_in_phases_and_reads_only_the_length(tmp_path):
    """65 key blocks per KV head: two phases (64 pattern iterations, then 1), the
    length inside the last block; a kernel that attends past the length is caught."""
    spec = decode_attn_spec(65 * decode_attn.block_keys(64))
    (launch,) = spec.launches
    program = ops.record(spec, launch)
    walks = [t.tap.sizes[0] for t in program.runtime.transfers() if t.tap.sizes[1] == 2]
    assert walks == [64, 64, 1, 1]  # phase by phase, both columns (a KV head each)
    (check,) = placed.check_specs([spec])
    assert check.report.violations == []
    inputs = random_inputs(spec)  # a length of 2/3 of the context: stale keys after it
    inputs["query"][:, 2 * 64] = 64 * decode_attn.block_keys(64) + 5  # into the last block
    assert within_flash_bound(spec, inputs)
    (obj,) = ops.kernel_objects(spec)
    source = obj.source.read_text()
    cut = "if (first >= s->length) return;"
    assert cut in source, "the decode_attn kernel changed: update the mutation"
    mutated = tmp_path / obj.source.name
    mutated.write_text(source.replace(cut, "s->length = 1 << 30;"))
    wrong = replace(obj, source=mutated)
    assert not within_flash_bound(spec, inputs, HostKernels([wrong]))


def test_a_shorter_walk_streams_the_caches_first_blocks_and_attends_as_the_whole_one():
    """A decode ELF for a generation's early steps streams the first 4 of the cache's 12
    key blocks per head (the cache's layout unchanged) and, for a length within them,
    attends as the ELF that walks the whole cache does."""
    keys = decode_attn.block_keys(64)
    short, whole = decode_attn_spec(12 * keys, 4 * keys), decode_attn_spec(12 * keys)
    walked = [t.tap for t in ops.record(short, short.launches[0]).runtime.transfers()
              if t.tap.sizes[1] == 2]  # fmt: skip
    assert [tap.sizes[0] for tap in walked] == [4, 4]  # a KV head per column
    assert walked[1].offset == 2 * 12 * keys * 64  # the second head: the cache's stride
    inputs = random_inputs(whole)
    inputs["query"][:, 2 * 64] = 3 * keys + 7
    assert within_flash_bound(short, inputs)
    ours = simulated(short, inputs)["attn_out"]
    assert np.array_equal(ours, simulated(whole, inputs)["attn_out"])


def quantized_gemv_specs(weights: str) -> list[ElfSpec]:
    """The decode GEMVs of the model's ELFs with weights of a GGUF block type."""
    return [s for key, s in one_launch_specs(weights).items() if key.startswith("gemv-")]


def quantized_inputs(spec: ElfSpec, weights: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random bf16 activations and weights quantized by llama.cpp's reference (gguf)."""
    import gguf

    from aierun.ops.quant import quantized_weight

    inputs = random_inputs(spec, seed)
    k = spec.launches[0].params["K"]
    for i, w in enumerate(a for a in spec.args if a.dtype == weights):
        rows = int(np.prod(w.shape[:-1]))
        values = np.random.default_rng(seed + 1 + i).standard_normal((rows, k), np.float32)
        blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType[weights.upper()])
        inputs[w.name] = quantized_weight(blocks, weights, w.layout, w.shape)
    return inputs


@pytest.mark.parametrize("weights", ["q4_0", "q4_1", "q8_0"])
def test_quantized_gemv_kernel_is_bit_identical_to_emu(weights):
    specs = quantized_gemv_specs(weights)
    assert specs and all(any(a.dtype == weights for a in s.args) for s in specs)
    for spec in specs:
        inputs = quantized_inputs(spec, weights)
        expected, ours = on_emu(spec, inputs), simulated(spec, inputs)
        for name in expected:
            diff = compare(written(spec, name, ours[name]), written(spec, name, expected[name]))
            assert diff.nonfinite == 0 and diff.max_abs == 0, (spec.name, name, diff)


@pytest.mark.parametrize("columns", [1, 2])
def test_mha_flash_attn_spreads_query_blocks_over_core_rows(columns):
    """One query head per KV head: the core rows take successive query blocks of the
    head (on one column, two rounds of 4 of its 8 blocks); the simulation matches emu."""
    from aiebuild.array.geometry import cores
    from aiebuild.ops import flash_attn

    seq, heads, dim = 256, 2, 64
    params = flash_attn.params(heads, heads, dim, seq)
    assert params["core_rows"] == 4 and params["columns"] == 2
    params = {**params, **cores(columns, 4)}
    args = (ArgSpec("q", (seq, heads * dim), "bf16", Role.INPUT),
            ArgSpec("k", (seq, heads * dim), "bf16", Role.INPUT),
            ArgSpec("v", (seq, heads * dim), "bf16", Role.INPUT),
            ArgSpec("o", (seq, heads * dim), "bf16", Role.OUTPUT))  # fmt: skip
    launch = Launch("flash_attn", params, ("q", "k", "v"), ("o",), "MHA")
    spec = ElfSpec("flash_attn_mha", "prefill", seq, args, (launch,))
    inputs = random_inputs(spec)
    diff = compare(simulated(spec, inputs)["o"], on_emu(spec, inputs)["o"])
    assert diff.nonfinite == 0 and diff.cosine >= FLASH_COSINE
    assert diff.max_abs <= FLASH_RELATIVE * diff.scale, diff


@pytest.mark.parametrize(
    ("cut", "paste"),
    [
        ("round_bf16(aie::load_v<HALF>(s->sums + HALF))", "aie::load_v<HALF>(s->sums + HALF)"),
        ("aie::load_v<HALF>(s->sums));", "aie::load_v<HALF>(s->sums + HALF));"),
    ],
    ids=["up-unrounded", "gate-read-as-up"],
)
def test_the_swiglu_epilogue_is_bit_identical_to_emu_and_a_mutated_one_is_caught(
    tmp_path, cut, paste
):
    """The fused gate+up GEMV writes exactly emu's silu(g) * u; an epilogue that skips
    the bf16 rounding the separate GEMVs did, or reads the wrong half of its block,
    does not."""
    (spec,) = [s for s in quantized_gemv_specs("q4_1") if "SwiGLU" in s.name]
    inputs, (obj,) = quantized_inputs(spec, "q4_1"), ops.kernel_objects(spec)
    source = obj.source.read_text()
    assert source.count(cut) == 1, "the gemv kernel changed: update the mutation"
    mutated = tmp_path / obj.source.name
    mutated.write_text(source.replace(cut, paste))
    expected = on_emu(spec, inputs)["a"]
    for kernels, equal in ((None, True), (HostKernels([replace(obj, source=mutated)]), False)):
        ours = simulated(spec, inputs, kernels)["a"]
        diff = compare(written(spec, "a", ours), written(spec, "a", expected))
        assert (diff.max_abs == 0) == equal, diff
