"""The hardware-rules check (aiebuild/array/rules.py) on programs recorded through the IRON model:
one design per rule, built to break it, refused with a message naming the rule and the
limit; a legal design of the same shape passes, so each refusal is the rule's doing."""

from __future__ import annotations

import numpy as np
import pytest

from aiebuild import placed, tasks
from aiebuild.array import iron_record, placement, rules
from aiebuild.array.placement import TileId
from aiebuild.ops import common
from aiebuild.specs import model_specs
from aierun.abi import BF16
from aierun.errors import UserError
from aierun.model import Checkpoint
from tests.sim.test_designs_simulated import SHAPE

I32 = np.dtype(np.int32)


def tensor(shape, dtype=I32):
    """An int32 tensor type unless said otherwise: the rules look at bytes, not values."""
    return common.tensor(shape, dtype)


def streaming(
    inputs: int = 1,
    outputs: int = 1,
    *,
    obj=(256,),
    dtype=I32,
    depth: int = 2,
    tile=None,
    buffers=(),
    stack: int | None = None,
    sequence=None,
    dims_to_stream=None,
    host=None,
) -> iron_record.Program:
    """One Worker consuming `inputs` fifos and producing `outputs` fifos of `obj`
    elements; the runtime fills / drains each whole host buffer (or runs `sequence`)."""
    with iron_record.recording() as lib:
        ins = [
            lib.ObjectFifo(tensor(obj, dtype), depth=depth, name=f"in{i}") for i in range(inputs)
        ]
        outs = [
            lib.ObjectFifo(tensor(obj, dtype), depth=depth, name=f"out{i}",
                           dims_to_stream=dims_to_stream)
            for i in range(outputs)
        ]  # fmt: skip
        local = [lib.Buffer(tensor(size, np.dtype(np.uint8)), name=f"b{i}") for i, size in
                 enumerate(buffers)]  # fmt: skip

        def core(*handles):
            for _ in lib.range_(4):
                for handle in handles[: inputs + outputs]:
                    handle.acquire(1)
                    handle.release(1)

        handles = [f.cons() for f in ins] + [f.prod() for f in outs]
        worker = lib.Worker(core, [*handles, *local], tile=tile, stack_size=stack)
        host = [tensor(host or obj, dtype)] * (inputs + outputs)
        ends = [f.prod() for f in ins] + [f.cons() for f in outs]

        def whole(*args):
            values, bound = args[: len(ends)], args[len(ends) :]
            group = lib.TaskGroup()
            for index, (value, handle) in enumerate(zip(values, bound, strict=True)):
                if index < inputs:
                    handle.fill(value, group=group)
                else:
                    handle.drain(value, wait=True, group=group)
            group.finish()

        runtime = lib.Runtime(sequence or whole, [*host, *ends])
        return lib.Program(lib.NPU2(), runtime, [worker])


def violations(program: iron_record.Program) -> list[str]:
    return [v.describe() for v in rules.check(program).violations]


def refused(program: iron_record.Program, rule: str, value: int, limit: int) -> str:
    """The one message of `rule`, which must state the value and the limit."""
    found = [m for m in violations(program) if rule in m]
    assert found, f"no {rule!r} violation in {violations(program)}"
    (message,) = found
    assert f" is {value} (" in message
    assert f"the limit is {limit}." in message or f"a multiple of {limit}." in message
    return message


def test_a_legal_design_passes_and_reports_its_usage():
    report = rules.check(streaming(2, 1))
    assert report.violations == []
    assert report.usage.cores == 1
    assert report.usage.dma_channels == 6  # 3 fifos, a DMA at each end
    assert report.usage.core_bds == 6  # depth 2 x 3 fifo ends
    assert report.usage.core_memory == 3 * 2 * 1024 + rules.DEFAULT_STACK
    assert report.usage.shim_bds == 3
    assert report.placement.workers[next(iter(report.placement.workers))] == TileId(0, 2)


def test_shim_ends_sit_in_their_cores_column_and_spill_to_the_nearest_free_shim():
    placed = placement.place(streaming(3, 1, tile=iron_record.Tile(3, 4)))
    shims = {handle.name: tile for handle, tile in placed.shims.items()}
    # in0, in1 take shim (3, 0)'s two MM2S channels; in2 goes to the nearest shim with one
    # free, the lower column first; out0 takes an S2MM channel of (3, 0)
    assert shims == {"in0": TileId(3, 0), "in1": TileId(3, 0), "in2": TileId(2, 0),
                     "out0": TileId(3, 0)}  # fmt: skip
    assert [(str(e), e.channel) for e in placed.at(TileId(3, 0))] == [
        ("in0 producer", 0), ("in1 producer", 1), ("out0 consumer", 0)
    ]  # fmt: skip


def test_three_input_fifos_into_one_core_are_refused():
    message = refused(streaming(3, 1), "input DMA channels", 3, 2)
    assert message.startswith("core (0, 2)")
    assert "in0 consumer, in1 consumer, in2 consumer" in message


def test_an_iteration_size_of_65_is_refused_and_64_passes():
    def sequence(outer):
        def run(src, dst, fill, drain):
            tap = iron_record.TensorAccessPattern((outer * 256,), 0, [outer, 1, 1, 256],
                                                 [256, 0, 0, 1])  # fmt: skip
            group = iron_record.TaskGroup()
            fill.fill(src, tap, group=group)
            drain.drain(dst, wait=True, group=group)
            group.finish()

        return run

    def design(outer):
        with iron_record.recording() as lib:
            fifo_in = lib.ObjectFifo(tensor(256), name="in0")
            fifo_out = lib.ObjectFifo(tensor(256), name="out0")

            def core(a, b):
                a.acquire(1)
                b.acquire(1)

            worker = lib.Worker(core, [fifo_in.cons(), fifo_out.prod()])
            host = [tensor(outer * 256)] * 2
            runtime = lib.Runtime(sequence(outer), [*host, fifo_in.prod(), fifo_out.cons()])
            return lib.Program(lib.NPU2(), runtime, [worker])

    assert violations(design(64)) == []
    refused(design(65), "iteration size", 65, 64)


def test_a_two_byte_aligned_offset_is_refused():
    def sequence(src, dst, fill, drain):
        group = iron_record.TaskGroup()
        fill.fill(src, iron_record.TensorAccessPattern((258,), 1, [1, 1, 1, 256], [0, 0, 0, 1]),
                  group=group)  # fmt: skip
        drain.drain(dst, wait=True, group=group)
        group.finish()

    program = streaming(1, 1, obj=(256,), dtype=BF16, sequence=sequence)
    message = refused(program, "offset (bytes)", 2, 4)
    assert "must be a multiple of 4" in message and "fill of in0" in message


def test_70_kib_of_core_buffers_are_refused():
    message = refused(
        streaming(1, 1, buffers=(40 * 1024, 30 * 1024)), "data memory (bytes)", 76800, 65536
    )
    assert "b0 40960, b1 30720, stack 1024" in message


def test_a_larger_stack_counts_against_core_memory():
    assert violations(streaming(1, 1, buffers=(58 * 1024,))) == []  # 64512 bytes
    refused(streaming(1, 1, buffers=(58 * 1024,), stack=4096), "data memory", 67584, 65536)


def test_17_live_shim_buffer_descriptors_are_refused():
    def sequence(src, dst, fill, drain):
        group = iron_record.TaskGroup()
        for part in range(16):  # 16 fills and a drain live until the finish
            tap = iron_record.TensorAccessPattern((16 * 256,), part * 256, [1, 1, 1, 256],
                                                 [0, 0, 0, 1])  # fmt: skip
            fill.fill(src, tap, group=group)
        drain.drain(dst, wait=True, group=group)
        group.finish()

    program = streaming(1, 1, sequence=sequence, host=(16 * 256,))
    message = refused(program, "live buffer descriptors", 17, 16)
    assert message.startswith("shim tile (0, 0)") and "in0 x16, out0 x1" in message
    refused(program, "queued tasks on MM2S 0", 16, 4)


def test_finished_groups_free_their_shim_buffer_descriptors():
    def sequence(src, dst, fill, drain):
        for _ in range(17):  # one phase per group: two tasks live at a time
            group = iron_record.TaskGroup()
            fill.fill(src, group=group)
            drain.drain(dst, wait=True, group=group)
            group.finish()

    report = rules.check(streaming(1, 1, sequence=sequence))
    assert report.violations == []
    assert report.usage.shim_bds == 2


def test_a_ninth_column_is_refused():
    message = refused(streaming(1, 1, tile=iron_record.Tile(8, 2)), "column", 8, 7)
    assert message.startswith("core (8, 2)") and "8 columns" in message


def test_a_worker_pinned_to_a_memory_tile_is_refused():
    message = refused(streaming(1, 1, tile=iron_record.Tile(0, 1)), "Worker tile kind", 1, 2)
    assert "pinned to row 1" in message and "rows 2-5" in message


def test_a_33rd_worker_lands_past_the_array_and_is_refused():
    with iron_record.recording() as lib:
        fifos = [lib.ObjectFifo(tensor(64), name=f"f{index:02}") for index in range(33)]
        workers = [lib.Worker(lambda h: h.acquire(1), [f.cons()]) for f in fifos]
        runtime = lib.Runtime(lambda *ends: None, [f.prod() for f in fifos])
        program = lib.Program(lib.NPU2(), runtime, workers)
    placed = placement.place(program)
    assert sorted(placed.workers.values())[-1] == TileId(8, 2)
    assert len([m for m in violations(program) if "column is 8" in m]) == 1


def test_more_locks_than_a_core_has_are_refused():
    """Nine shared-memory fifos from (0, 2) to its northern neighbour: no DMA channel,
    two locks each on the producer's tile."""
    with iron_record.recording() as lib:
        fifos = [lib.ObjectFifo(tensor(64), name=f"s{i}") for i in range(9)]

        def touch(*handles):
            for handle in handles:
                handle.acquire(1)

        producer = lib.Worker(touch, [f.prod() for f in fifos], tile=iron_record.Tile(0, 2))
        consumer = lib.Worker(touch, [f.cons() for f in fifos], tile=iron_record.Tile(0, 3))
        program = lib.Program(lib.NPU2(), lib.Runtime(lambda: None, []), [producer, consumer])
    placed = placement.place(program)
    assert all(placed.shares_memory(f) for f in program.fifos)
    message = refused(program, "locks", 18, 16)
    assert message.startswith("core (0, 2)")
    assert violations(program) == [message]


def test_more_buffer_descriptors_than_a_core_has_are_refused():
    message = refused(streaming(1, 1, depth=9), "buffer descriptors", 18, 16)
    assert "in0 consumer 9, out0 producer 9" in message


def test_a_split_wider_than_the_memory_tile_is_refused():
    with iron_record.recording() as lib:
        source = lib.ObjectFifo(tensor(7 * 64), name="wide")
        parts = source.cons().split([64 * i for i in range(7)], obj_types=[tensor(64)] * 7)
        workers = [lib.Worker(lambda h: h.acquire(1), [p.cons()]) for p in parts]
        runtime = lib.Runtime(lambda src, fill: fill.fill(src), [tensor(7 * 64), source.prod()])
        program = lib.Program(lib.NPU2(), runtime, workers)
    # the link's seven outputs feed cores in columns 0 (four) and 1 (three)
    assert placement.place(program).links[program.links[0]] == TileId(0, 1)
    refused(program, "split fan-out", 7, 6)
    refused(program, "output DMA channels", 7, 6)


def resizing_forward(words: int) -> iron_record.Program:
    """A memory tile forwards `words`-word objects (depth 1) as 1024-word core objects."""
    with iron_record.recording() as lib:
        source = lib.ObjectFifo(tensor(words), depth=1, name="chunks")
        tiles = source.cons().forward(obj_type=tensor(1024), name="tiles")
        worker = lib.Worker(lambda h: (h.acquire(1), h.release(1)), [tiles.cons()])
        runtime = lib.Runtime(lambda src, fill: fill.fill(src), [tensor(words), source.prod()])
        return lib.Program(lib.NPU2(), runtime, [worker])


def test_a_resizing_forward_sends_its_whole_chunk_in_one_memory_tile_bd():
    """The memory tile's BD on the forward's output moves the link's buffer (the chunk),
    not a core object: both memory-tile ends of a chunk over the BD length are refused."""
    assert not [m for m in violations(resizing_forward(1 << 16)) if "BD length" in m]
    refused_ends = [m for m in violations(resizing_forward(1 << 17)) if "BD length" in m]
    chunk_end, tile_end = refused_ends
    assert "(chunks consumer," in chunk_end and "(tiles producer," in tile_end
    assert all(" is 131072 (" in m and "limit is 131071." in m for m in refused_ends)


def test_core_dims_to_stream_keep_to_three_dims_and_eight_bit_wraps():
    assert violations(streaming(1, 1, obj=(16, 32), dims_to_stream=[(16, 32), (32, 1)])) == []
    four = [(2, 16), (8, 32), (4, 4), (4, 1)]
    refused(streaming(1, 1, obj=(16, 32), dims_to_stream=four), "BD dimensions", 4, 3)
    wide = [(2, 512), (512, 1)]  # 512 int32 = 512 words in the 8-bit d0 wrap
    refused(streaming(1, 1, obj=(2, 512), dims_to_stream=wide), "size of dimension 0", 512, 255)


# --- the defects of issue 8 (items 1 and 2), on programs built like the designs were -----


def test_flash_attention_with_q_k_v_into_one_core_is_refused():
    """flash_attn as it was (aiebuild/ops/flash_attn.py before issue 10): q, k and v
    blocks into one core, the output out of it."""
    with iron_record.recording() as lib:
        block = tensor((32, 64), BF16)
        q, k, v, o = (lib.ObjectFifo(block, name=n) for n in ("q_in", "k_in", "v_in", "o_out"))
        state = lib.Buffer(tensor(32 * 64 + 66, np.dtype(np.float32)), name="state")

        def core(qs, ks, vs, out, acc):
            for _ in lib.range_(9 * 2):
                qs.acquire(1)
                for _ in lib.range_(2):
                    ks.acquire(1), vs.acquire(1)
                    ks.release(1), vs.release(1)
                qs.release(1)
                out.acquire(1)
                out.release(1)

        worker = lib.Worker(core, [q.cons(), k.cons(), v.cons(), o.prod(), state])
        host = [tensor((64, 576), BF16), *[tensor((64, 192), BF16)] * 2, tensor((64, 576), BF16)]
        handles = [q.prod(), k.prod(), v.prod(), o.cons()]

        def sequence(qh, kh, vh, oh, *ends):
            group = lib.TaskGroup()
            for value, handle in zip((qh, kh, vh), ends[:3], strict=True):
                handle.fill(value, group=group)
            ends[3].drain(oh, wait=True, group=group)
            group.finish()

        program = lib.Program(lib.NPU2(), lib.Runtime(sequence, [*host, *handles]), [worker])
    message = refused(program, "input DMA channels", 3, 2)
    assert "k_in consumer, q_in consumer, v_in consumer" in message


def test_the_lm_head_weight_pattern_of_the_default_model_is_refused():
    """lm_head_gemv as it was on SmolLM2-135M (E = 576, V / 8 = 6144 rows per partition):
    w tiles [N / 32, K / 64, 32, 64], an iteration size of 192."""

    def sequence(x, w, y, x_fill, w_fill, y_drain):
        group = iron_record.TaskGroup()
        x_fill.fill(x, group=group)
        w_fill.fill(w, iron_record.TensorAccessPattern((6144, 576), 0, [192, 9, 32, 64],
                    [32 * 576, 64, 576, 1]), group=group)  # fmt: skip
        y_drain.drain(y, wait=True, group=group)
        group.finish()

    with iron_record.recording() as lib:
        x_in = lib.ObjectFifo(tensor(576, BF16), depth=1, name="x_in")
        w_in = lib.ObjectFifo(tensor((32, 64), BF16), name="w_in")
        y_out = lib.ObjectFifo(tensor(32, np.dtype(np.float32)), name="y_out")

        def core(xs, ws, ys):
            xs.acquire(1)
            for _ in lib.range_(192):
                ys.acquire(1)
                for _ in lib.range_(9):
                    ws.acquire(1)
                    ws.release(1)
                ys.release(1)

        worker = lib.Worker(core, [x_in.cons(), w_in.cons(), y_out.prod()])
        host = [tensor(576, BF16), tensor((6144, 576), BF16), tensor(6144, np.dtype(np.float32))]
        runtime = lib.Runtime(sequence, [*host, x_in.prod(), w_in.prod(), y_out.cons()])
        program = lib.Program(lib.NPU2(), runtime, [worker])
    message = refused(program, "iteration size", 192, 64)
    assert message.startswith("shim tile (0, 0)") and "fill of w_in" in message


@pytest.mark.parametrize("rule", ["column", "input DMA channels"])
def test_a_refusal_names_the_elf_and_the_launch(rule, monkeypatch):
    from aierun.abi import ElfSpec, Launch

    spec = ElfSpec("flash_attn", "prefill", 64, (), (Launch("flash_attn", {}, (), (), "GQA"),))
    bad = streaming(3, 1, tile=iron_record.Tile(8, 2))
    monkeypatch.setattr(placed.ops, "record", lambda spec, launch: bad)
    monkeypatch.setattr(placed.ops, "kernel_object", lambda spec, launch: None)
    with pytest.raises(rules.RulesError) as refusal:
        placed.require_legal([spec])
    lines = str(refusal.value).splitlines()
    assert "2 violations" in lines[0]
    (line,) = [line for line in lines if f"{rule} is" in line]
    where = "- flash_attn.s64 (prefill bucket 64), launch 'GQA' (flash_attn), core (8, 2): "
    assert line.startswith(where)


# --- the designs in the tree ------------------------------------------------------------


def test_doit_check_passes_for_the_default_model(model_dir, tmp_path, capsys):
    config = tasks.BuildConfig(tmp_path, str(model_dir), (64, 256, 2048), "emu")
    tasks.check_designs(config)  # raises RulesError naming every violation
    limits, timing = capsys.readouterr().out.split("\n\n")  # the rules table, the time table
    *table, verdict = limits.splitlines()
    assert table[0].split()[:3] == ["ELF", "launches", "cores"]
    assert "(/16)" in table[0] and "(/64 KiB)" in table[0]  # the limits beside the counts
    instances = {spec.instance for spec in model_specs(Checkpoint(model_dir).shape)}
    assert {line.split()[0] for line in table[1:]} == instances
    assert verdict.startswith(f"PASS: every launch of the {len(instances)} ELFs")
    header = timing.index("ELF ")  # after the log lines of any host kernel compiled for it
    timed = timing[header:].splitlines()[1 : len(instances) + 1]
    assert {line.split()[0] for line in timed} == instances


def test_a_bucket_the_prefill_kernels_cannot_tile_is_refused_with_rounded_ones():
    # Named as a bucket (not as the decode context it would double into), with advice
    # the compiler accepts.
    with pytest.raises(UserError, match=r"buckets \[100\] are not multiples of 32.*=64,128$"):
        model_specs(SHAPE, (64, 100))


@pytest.mark.parametrize("config", ["Llama-3.2-3B", "Llama-3.1-8B", "Qwen3-8B"])
def test_the_decode_attention_of_the_larger_models_keeps_its_strides_legal(config):
    # Their default context (2 x 2048) with 8 KV heads: the cache's K -> V step once
    # strode past a shim dimension's 2^20 words.
    from aiebuild.specs import decode_context, o_gemv_ffn
    from aierun.model import ModelShape
    from tools.random_llama import CONFIGS

    shape = ModelShape.from_config(CONFIGS[config])
    placed.require_legal([o_gemv_ffn(shape, decode_context(shape, [2048]))])
