"""The dataflow model's semantics on tiny hand-written IRON programs, with Python
kernels (aiebuild/sim/dataflow.py; IRON 1.4 semantics cited there)."""

from __future__ import annotations

import numpy as np
import pytest

from aiebuild.array import iron_record as im
from aiebuild.ops.common import tensor
from aiebuild.sim.dataflow import DataflowError, Launch

F32 = np.dtype(np.float32)


def kernels(**functions):
    """A kernel lookup from Python functions named by symbol."""
    return lambda kernel, worker: functions[kernel.symbol]


def add(value: float):
    def kernel(x, y):
        y[...] = x + value

    return kernel


def streaming(lib, fifo_in, fifo_out, kernel, steps: int):
    def core(i, o, fn):
        for _ in lib.range_(steps):
            x, y = i.acquire(1), o.acquire(1)
            fn(x, y)
            i.release(1)
            o.release(1)

    return lib.Worker(core, [fifo_in.cons(), fifo_out.prod(), kernel])


def sequence(lib, n_in: int, n_out: int, handles, body):
    args = [tensor((n_in,), F32), tensor((n_out,), F32)]
    return lib.Runtime(body, [*args, *handles])


def fill_drain(src, dst, a, b):
    a.fill(src)
    b.drain(dst, wait=True)


def one_worker(n: int = 64, chunk: int = 16, steps: int | None = None, drained: int | None = None):
    with im.recording() as lib:
        t = tensor((chunk,), F32)
        a, b = lib.ObjectFifo(t, name="a"), lib.ObjectFifo(t, name="b")
        worker = streaming(lib, a, b, lib.Kernel("inc", "k.o", [t, t]), steps or n // chunk)
        out = drained or n
        runtime = sequence(lib, n, out, [a.prod(), b.cons()], fill_drain)
        return lib.Program(lib.NPU2(), runtime, [worker])


def test_a_stream_through_one_worker():
    src, dst = np.arange(64, dtype=F32), np.zeros(64, F32)
    stats = Launch(one_worker(), kernels(inc=add(1))).run([src, dst])
    np.testing.assert_array_equal(dst, src + 1)
    assert stats.kernel_calls == 4


def test_the_worker_loops_until_the_data_ends():
    """while(true): a body of one step runs once per object."""
    src, dst = np.arange(64, dtype=F32), np.zeros(64, F32)
    Launch(one_worker(steps=1), kernels(inc=add(1))).run([src, dst])
    np.testing.assert_array_equal(dst, src + 1)


def test_data_left_in_a_fifo_is_an_error():
    src, dst = np.arange(64, dtype=F32), np.zeros(32, F32)
    with pytest.raises(DataflowError, match=r"fifo b still holds 2 object"):
        Launch(one_worker(drained=32), kernels(inc=add(1))).run([src, dst])


def two_fifos(depth: int, first: int):
    """P writes `first` objects to f1, then `first` to f2; C alternates f1, f2."""
    with im.recording() as lib:
        t = tensor((4,), F32)
        f1 = lib.ObjectFifo(t, depth=depth, name="f1")
        f2 = lib.ObjectFifo(t, depth=depth, name="f2")
        out = lib.ObjectFifo(t, name="out")
        source = lib.ObjectFifo(t, name="source")
        copy = lib.Kernel("copy", "k.o", [t, t])
        pair = lib.Kernel("pair", "k.o", [t, t, t])

        def producer(src, o1, o2, fn):
            x = src.acquire(1)
            for o in (o1, o2):
                for _ in lib.range_(first):
                    fn(x, o.acquire(1))
                    o.release(1)
            src.release(1)

        def consumer(i1, i2, o, fn):
            for _ in lib.range_(first):
                a, b = i1.acquire(1), i2.acquire(1)
                fn(a, b, o.acquire(1))
                i1.release(1)
                i2.release(1)
                o.release(1)

        workers = [
            lib.Worker(producer, [source.cons(), f1.prod(), f2.prod(), copy]),
            lib.Worker(consumer, [f1.cons(), f2.cons(), out.prod(), pair]),
        ]
        runtime = sequence(lib, 4, 4 * first, [source.prod(), out.cons()], fill_drain)
        return lib.Program(lib.NPU2(), runtime, workers)


def copy(x, y):
    y[...] = x


def pair(a, b, y):
    y[...] = a + b


def test_a_producer_blocks_when_all_depth_objects_are_full():
    """P must put all 4 objects into f1 before f2 while C holds f1's first waiting
    for f2: depth 4 lets it, depth 3 cannot (P waits on a full f1, C for f2)."""
    src = np.arange(4, dtype=F32)
    dst = np.zeros(16, F32)
    Launch(two_fifos(depth=4, first=4), kernels(copy=copy, pair=pair)).run([src, dst])
    np.testing.assert_array_equal(dst, np.tile(2 * src, 4))
    with pytest.raises(DataflowError, match=r"deadlock") as error:
        Launch(two_fifos(depth=3, first=4), kernels(copy=copy, pair=pair)).run([src, dst])
    message = str(error.value)
    assert "waits in f1.prod.acquire(1)" in message and "waits in f2.cons.acquire(1)" in message
    assert "drain from fifo out (argument 1): 0 of 16 elements" in message


def test_acquiring_more_than_the_depth_is_refused():
    with im.recording() as lib:
        t = tensor((4,), F32)
        a, b = lib.ObjectFifo(t, depth=2, name="a"), lib.ObjectFifo(t, name="b")
        k = lib.Kernel("k", "k.o", [t, t])

        def core(i, o, fn):
            x = i.acquire(3)
            fn(x[2], o.acquire(1))
            i.release(3)
            o.release(1)

        w = lib.Worker(core, [a.cons(), b.prod(), k])
        program = lib.Program(
            lib.NPU2(), sequence(lib, 12, 4, [a.prod(), b.cons()], fill_drain), [w]
        )
    with pytest.raises(DataflowError, match=r"acquires 3 objects of fifo a, which has 2"):
        Launch(program, kernels(k=copy)).run([np.zeros(12, F32), np.zeros(4, F32)])


def split_join(chunk: int = 8, dims: list | None = None):
    """A memory tile splits each object in halves for two workers (+100, +200) and
    joins their results back in place."""
    with im.recording() as lib:
        whole, half = tensor((chunk,), F32), tensor((chunk // 2,), F32)
        source, result = lib.ObjectFifo(whole, name="in"), lib.ObjectFifo(whole, name="out")
        offsets = [0, chunk // 2]
        parts = source.cons().split(offsets, obj_types=[half, half], names=["in0", "in1"])
        joined = result.prod().join(offsets, obj_types=[half, half], names=["out0", "out1"],
                                    dims_to_stream=dims)  # fmt: skip
        workers = [
            streaming(lib, part, out, lib.Kernel(f"add{i}", "k.o", [half, half]), 1)
            for i, (part, out) in enumerate(zip(parts, joined, strict=True))
        ]
        runtime = sequence(lib, 32, 32, [source.prod(), result.cons()], fill_drain)
        return lib.Program(lib.NPU2(), runtime, workers)


def test_split_and_join_place_each_part_at_its_offset():
    src, dst = np.arange(32, dtype=F32), np.zeros(32, F32)
    Launch(split_join(), kernels(add0=add(100), add1=add(200))).run([src, dst])
    expected = src + np.where(np.arange(32) % 8 < 4, 100, 200)
    np.testing.assert_array_equal(dst, expected)


def test_dims_to_stream_reorders_what_the_producer_sends():
    """(size, stride) pairs, highest first: [(2, 1), (2, 2)] sends a 4-element half
    as elements 0, 2, 1, 3."""
    src, dst = np.arange(32, dtype=F32), np.zeros(32, F32)
    program = split_join(dims=[[(2, 1), (2, 2)], None])
    Launch(program, kernels(add0=add(0), add1=add(0))).run([src, dst])
    first = src.reshape(4, 8)[:, :4][:, [0, 2, 1, 3]]
    np.testing.assert_array_equal(dst.reshape(4, 8)[:, :4], first)
    np.testing.assert_array_equal(dst.reshape(4, 8)[:, 4:], src.reshape(4, 8)[:, 4:])


def resizing_forward(chunk: int, dims: list | None):
    """A memory tile forwards 8-element objects as `chunk`-element ones to a worker
    that tags each object it gets with its running count."""
    with im.recording() as lib:
        whole, part = tensor((8,), F32), tensor((chunk,), F32)
        source = lib.ObjectFifo(whole, name="in")
        parts = source.cons().forward(obj_type=part, name="parts", dims_to_stream=dims)
        result = lib.ObjectFifo(part, name="out")
        worker = streaming(lib, parts, result, lib.Kernel("tag", "k.o", [part, part]), 1)
        runtime = sequence(lib, 16, 16, [source.prod(), result.cons()], fill_drain)
        return lib.Program(lib.NPU2(), runtime, [worker])


def tagging():
    calls = iter(range(100))

    def kernel(x, y):
        y[...] = x + 100 * next(calls)

    return kernel


def test_a_forward_into_smaller_objects_cuts_each_object_in_its_stream_order():
    """dims [(4, 1), (2, 4)] stream an 8-element object as 0 4 1 5 2 6 3 7; the worker
    gets it as two 4-element objects."""
    src, dst = np.arange(16, dtype=F32), np.zeros(16, F32)
    program = resizing_forward(4, [(4, 1), (2, 4)])
    assert program.links[0].resizes
    Launch(program, kernels(tag=tagging())).run([src, dst])
    stream = src.reshape(2, 2, 4).transpose(0, 2, 1).reshape(-1)
    np.testing.assert_array_equal(dst, stream + 100 * np.repeat(np.arange(4), 4))


def test_a_forward_into_objects_that_do_not_divide_it_is_an_error():
    with pytest.raises(DataflowError, match=r"8-element objects do not cut into 3-element"):
        Launch(resizing_forward(3, None), kernels(tag=tagging())).run(
            [np.zeros(16, F32), np.zeros(16, F32)]
        )


def phased(phases: int, drain_extra: int = 0):
    """Phase i fills chunk i and drains its result in its own task group."""
    with im.recording() as lib:
        t = tensor((8,), F32)
        a, b = lib.ObjectFifo(t, name="a"), lib.ObjectFifo(t, name="b")
        worker = streaming(lib, a, b, lib.Kernel("inc", "k.o", [t, t]), 1)

        def body(src, dst, fill, drain):
            for phase in range(phases):
                group = lib.TaskGroup()
                fill.fill(src, lib.TensorAccessPattern((8 * phases,), 8 * phase, [8], [1]),
                          group=group)  # fmt: skip
                size = 8 + (drain_extra if phase == 0 else 0)
                drain.drain(dst, lib.TensorAccessPattern((8 * phases,), 8 * phase, [size], [1]),
                            wait=True, group=group)  # fmt: skip
                group.finish()

        runtime = sequence(lib, 8 * phases, 8 * phases, [a.prod(), b.cons()], body)
        return lib.Program(lib.NPU2(), runtime, [worker])


def test_task_groups_run_phase_after_phase():
    src, dst = np.arange(24, dtype=F32), np.zeros(24, F32)
    Launch(phased(3), kernels(inc=add(1))).run([src, dst])
    np.testing.assert_array_equal(dst, src + 1)


def test_a_finish_waiting_on_a_drain_that_cannot_complete_is_a_deadlock():
    """Phase 0 drains 12 elements but only phase 1's fill would bring the rest: its
    finish() waits forever."""
    src, dst = np.arange(16, dtype=F32), np.zeros(16, F32)
    with pytest.raises(DataflowError, match=r"drain from fifo b \(argument 1\): 8 of 12"):
        Launch(phased(2, drain_extra=4), kernels(inc=add(1))).run([src, dst])


def test_a_buffer_keeps_its_value_across_iterations():
    with im.recording() as lib:
        t, count = tensor((4,), F32), tensor((1,), np.dtype(np.int32))
        a, b = lib.ObjectFifo(t, name="a"), lib.ObjectFifo(t, name="b")
        state = lib.Buffer(count, initial_value=np.array([10], np.int32), name="n")
        k = lib.Kernel("count", "k.o", [t, t, count])

        def core(i, o, n, fn):
            fn(i.acquire(1), o.acquire(1), n)
            i.release(1)
            o.release(1)

        w = lib.Worker(core, [a.cons(), b.prod(), state, k])
        program = lib.Program(
            lib.NPU2(), sequence(lib, 12, 12, [a.prod(), b.cons()], fill_drain), [w]
        )

    def counting(x, y, n):
        n += 1
        y[...] = n[0]

    src, dst = np.zeros(12, F32), np.zeros(12, F32)
    Launch(program, kernels(count=counting)).run([src, dst])
    np.testing.assert_array_equal(dst, np.repeat([11, 12, 13], 4))


def test_a_worker_stuck_mid_body_is_an_error():
    """Two inputs of 3 and 2 objects: the third iteration takes x and waits for w."""
    with im.recording() as lib:
        t = tensor((4,), F32)
        a, w, b = (lib.ObjectFifo(t, name=n) for n in ("a", "w", "b"))
        k = lib.Kernel("pair", "k.o", [t, t, t])

        def core(i, j, o, fn):
            fn(i.acquire(1), j.acquire(1), o.acquire(1))
            i.release(1)
            j.release(1)
            o.release(1)

        def body(x, y, out, fa, fw, fb):
            fa.fill(x)
            fw.fill(y)
            fb.drain(out, wait=True)

        args = [tensor((12,), F32), tensor((8,), F32), tensor((8,), F32)]
        runtime = lib.Runtime(body, [*args, a.prod(), w.prod(), b.cons()])
        worker = lib.Worker(core, [a.cons(), w.cons(), b.prod(), k])
        program = lib.Program(lib.NPU2(), runtime, [worker])
    hosts = [np.zeros(12, F32), np.zeros(8, F32), np.zeros(8, F32)]
    with pytest.raises(DataflowError, match=r"stuck mid-body \(blocked at w.cons.acquire") as e:
        Launch(program, kernels(pair=pair)).run(hosts)
    assert "holding {'a': 1}" in str(e.value)


def test_a_pattern_outside_its_host_buffer_is_an_error():
    program = one_worker()
    transfer = program.runtime.body[0]
    transfer.tap = im.TensorAccessPattern((64,), 16, [1, 1, 1, 64], [0, 0, 0, 1])
    with pytest.raises(DataflowError, match=r"fill of fifo a \(argument 0\) reaches elements"):
        Launch(program, kernels(inc=add(1))).run([np.zeros(64, F32), np.zeros(64, F32)])


def test_a_kernel_argument_of_the_wrong_size_is_an_error():
    """A record whose call passes a 16-element object where the kernel takes 8."""
    program = one_worker()
    (worker,) = program.workers
    call = next(n for n, _ in im.walk(worker.body) if isinstance(n, im.Call))
    call.kernel.arg_types[0] = tensor((8,), F32)
    with pytest.raises(DataflowError, match=r"inc argument 0 is \(16,\) \(64 bytes\)"):
        Launch(program, kernels(inc=add(1))).run([np.zeros(64, F32), np.zeros(64, F32)])
