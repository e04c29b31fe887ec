"""The executable model of the IRON subset our designs use: runs one recorded launch
(`aiebuild.ops.record(spec, launch)`, an `iron_record.Program`) on host buffers.

Everything the program recorded executes, under a cooperative scheduler of
generators (one per worker, per memory-tile link part, per shim DMA channel, and
one for the runtime sequence); a process runs until it blocks on an acquire or on
a task, then yields. The semantics follow mlir-aie v1.4.0 (db06374):

- ObjectFifo (programming_guide/section-2/section-2a): an ordered ring of `depth`
  objects; a producer blocks while all of them are full, a consumer while none is
  ready. `acquire(n)` gives access to the n oldest objects the handle may access,
  counting the ones it still holds ("two acquire calls back-to-back without a
  release call in-between will result in the same objects"), and `release(n)`
  hands back the n oldest held. Every consumer of a fifo sees every object
  (section-2b/02_Broadcast); an object is free again once every consumer released it.
  On hardware the producer and each consumer tile have their own pool of `depth`
  objects (section-2b/02_Broadcast, "Specifying the ObjectFifo Depth as an Array");
  the model keeps ONE pool per fifo: the smallest capacity any lowering gives. In a
  Kahn process network with blocking writes, more capacity cannot introduce a
  deadlock, so a launch that completes here completes with the hardware's pools.
- `dims_to_stream` / `dims_from_stream` (section-2c; objectfifo.py
  `ObjectFifo.__init__`): (size, stride) pairs, highest dimension first, applied
  when the producer's DMA pushes an object onto the stream / when a consumer's DMA
  writes it into its buffer. `repeat_count` (section-2b/04_Repeat): the producer's
  DMA sends every object that many times.
- Memory-tile links (objectfifo.py `split`, `join`, `forward`; section-2e): a split
  cuts every input object at `offsets` into one object of each output fifo, a join
  assembles one output object from one object of every input at `offsets`, a
  forward is a split into one; a forward into smaller objects streams each input
  object whole and fills consecutive output objects with it (im.Link.resizes).
  Each output (input) of a link is an independent DMA channel of the memory tile,
  so one may run ahead of another by the depth.
- Workers (worker.py `Worker`, `while_true=True`): the traced body runs in a
  `while(true)` loop until the launch ends; `range_` loops (controlflow.py) run
  their traced body `count` times. Buffers (buffer.py) keep their values across
  iterations; one without an initial value holds whatever the memory held (here
  a NaN / -1 bit pattern, so a kernel that reads it before writing shows).
- The runtime sequence (runtime/runtime.py): `fill` / `drain` start a shim DMA task
  at once (tasks on one handle run in issue order, as a DMA channel's chain of
  buffer descriptors), the sequence goes on without waiting; `TaskGroup.finish()`
  (`finish_task_group`) awaits the group's waited tasks, then frees all of them.
  Fills stream the host elements `tap.indices()` selects, in order, into
  consecutive objects; drains write consecutive objects' elements there.

A launch ends when its sequence has finished and nothing can move any more. It is
an error (DataflowError, naming the launch and the fifo, worker or transfer) when
the processes block before the sequence finished (a deadlock, a drain that never
completes), a task did not complete, a fifo still holds data, a worker is stuck
mid-body (idle at the top of its body, waiting for its first acquire, is how a
finished worker looks), a transfer's pattern leaves its host buffer, or a kernel
argument's size differs from the parameter's.

Kernels are looked up through an injected callable (`KernelLookup`): each call
gets numpy arrays that ARE the fifo objects and buffers (views, never copies), so
a kernel writes its results in place, and ints as ints.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiebuild.array import iron_record as im

# (kernel, the worker calling it) -> the callable; the worker lets a lookup keep per-core
# state such as the rounding mode register.
KernelLookup = Callable[[im.Kernel, im.Worker], Callable[..., Any]]
# A process yields when it cannot go on; the scheduler resumes it in the next round.
Process = Iterator[None]


class DataflowError(RuntimeError):
    """The launch cannot run as recorded; the message names what and where."""


@dataclass
class Stats:
    """What one simulated launch did."""

    kernel_calls: int = 0
    objects: int = 0  # fifo objects released by producers
    rounds: int = 0  # scheduler rounds
    warnings: list[str] = field(default_factory=list)


def poisoned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Memory nobody wrote: all bits set (NaN for bf16 / fp32, -1 for integers)."""
    array = np.empty(shape, dtype)
    array.view(np.uint8).fill(0xFF)
    return array


def stream_order(pairs: list[tuple[int, int]], size: int, what: str) -> np.ndarray | None:
    """The buffer index of every stream element for `dims_to_stream` /
    `dims_from_stream` pairs (None: the buffer in order)."""
    if not pairs:
        return None
    sizes, strides = zip(*pairs, strict=True)
    order = im.TensorAccessPattern((size,), 0, sizes, strides).indices()
    if order.size != size or order.min() < 0 or order.max() >= size:
        raise DataflowError(
            f"{what}: the stream dimensions {pairs} address {order.size} elements in "
            f"[{order.min()}, {order.max()}], the object has {size}"
        )
    return order


class FifoState:
    """One ObjectFifo at run time: a ring of `capacity` producer objects, written by
    `writers` parts (a join's inputs, else 1) and read by `slots` consumer cursors
    (a split's outputs each count as one), with sequence numbers per side."""

    def __init__(self, fifo: im.ObjectFifo, slots: list[im.ObjectFifoHandle], writers: int):
        self.fifo, self.name, self.writers = fifo, fifo.name, writers
        self.capacity = _capacity(fifo)
        self.repeat = fifo.repeat_count or 1
        self.pool = [poisoned(fifo.shape, fifo.dtype) for _ in range(self.capacity)]
        self.parts = [0] * self.capacity  # writers done with the object in each slot
        self.produced = 0  # objects the producer side released
        self.released = [0] * len(slots)  # objects each consumer slot released
        self.slots = slots
        # A resizing forward applies its output's dims_to_stream to the memory tile's
        # bigger buffer (resizing_forward), not to the output objects.
        link = fifo.producer.endpoint if fifo.producer is not None else None
        to_stream = None if isinstance(link, im.Link) and link.resizes else stream_order(
            fifo.dims_to_stream, fifo.size, f"fifo {fifo.name} producer")  # fmt: skip
        self.orders = [
            (to_stream, stream_order(h.dims_from_stream, fifo.size, f"fifo {fifo.name} consumer"))
            for h in slots
        ]
        # A consumer with a layout change gets its own copy of every object.
        self.copies = [
            None if orders[0] is None and orders[1] is None else [poisoned(fifo.shape, fifo.dtype)
                                                 for _ in range(self.capacity)]
            for orders in self.orders
        ]  # fmt: skip

    def writable(self, seq: int) -> bool:
        freed = min(self.released, default=self.produced * self.repeat) // self.repeat
        return seq < freed + self.capacity

    def commit(self, seq: int, stats: Stats) -> None:
        """One writer is done with object `seq`; publish the objects all writers did."""
        self.parts[seq % self.capacity] += 1
        while self.parts[self.produced % self.capacity] == self.writers:
            slot = self.produced % self.capacity
            self.parts[slot] = 0
            self._publish(slot)
            self.produced += 1
            stats.objects += 1

    def _publish(self, slot: int) -> None:
        source = self.pool[slot].reshape(-1)
        for (to_stream, from_stream), copies in zip(self.orders, self.copies, strict=True):
            if copies is None:
                continue
            stream = source if to_stream is None else source[to_stream]
            target = copies[slot].reshape(-1)
            if from_stream is None:
                target[...] = stream
            else:
                target[from_stream] = stream

    def readable(self, consumer: int, seq: int) -> bool:
        return seq // self.repeat < self.produced

    def view(self, consumer: int, seq: int) -> np.ndarray:
        copies = self.copies[consumer]
        slot = (seq // self.repeat) % self.capacity
        return self.pool[slot] if copies is None else copies[slot]

    def leftover(self) -> str | None:
        """What data the fifo still holds, or None when it is empty."""
        pending = sum(1 for parts in self.parts if parts)
        unread = [
            (handle, self.produced * self.repeat - done)
            for handle, done in zip(self.slots, self.released, strict=True)
            if self.produced * self.repeat - done
        ]
        if not pending and not unread:
            return None
        parts = [f"{n} object(s) its consumer {_endpoint(h)} never released" for h, n in unread]
        if pending:
            parts.append(f"{pending} object(s) only partly written by {self.writers} writers")
        return f"fifo {self.name} still holds " + ", ".join(parts)


def _capacity(fifo: im.ObjectFifo) -> int:
    """The one pool: the depth the producer asked for, or (the shim having no pool)
    the smallest consumer depth."""
    producer = fifo.producer
    if producer is not None and not isinstance(producer.endpoint, im.Runtime):
        return producer.depth
    return min((h.depth for h in fifo.consumers), default=fifo.depth)


def _endpoint(handle: im.ObjectFifoHandle) -> str:
    return repr(handle.endpoint) if handle.endpoint is not None else "nobody"


class Cursor:
    """One endpoint's access to a fifo: the sequence numbers it holds, oldest first."""

    def __init__(self, state: FifoState, producer: bool, slot: int, stats: Stats) -> None:
        self.state, self.producer, self.slot, self.stats = state, producer, slot, stats
        self.held: deque[int] = deque()
        self.next = 0

    def acquire(self, count: int) -> bool:
        """Hold `count` objects (counting those held); False while that must wait."""
        state = self.state
        while len(self.held) < count:
            ready = (
                state.writable(self.next) if self.producer
                else state.readable(self.slot, self.next)
            )  # fmt: skip
            if not ready:
                return False
            self.held.append(self.next)
            self.next += 1
        return True

    def release(self, count: int) -> None:
        if count > len(self.held):
            raise DataflowError(
                f"fifo {self.state.name}: release({count}) with {len(self.held)} held"
            )
        for _ in range(count):
            seq = self.held.popleft()
            if self.producer:
                self.state.commit(seq, self.stats)
        if not self.producer:
            self.state.released[self.slot] += count

    def array(self, index: int) -> np.ndarray:
        seq = self.held[index]
        if self.producer:
            return self.state.pool[seq % self.state.capacity]
        return self.state.view(self.slot, seq)


# --- the processes --------------------------------------------------------------------


class Scheduler:
    """Round-robin over the processes; `steps` counts every move, so a round without
    one means nothing can move any more."""

    def __init__(self) -> None:
        self.steps = 0
        self.stats = Stats()

    def run(self, processes: list[Process], done: Callable[[], bool]) -> bool:
        """Run until `done()` and quiet, or until stuck; True when `done()`."""
        live = list(processes)
        while True:
            self.stats.rounds += 1
            before = self.steps
            for process in list(live):
                try:
                    next(process)
                except StopIteration:
                    live.remove(process)
                    self.steps += 1
            if self.steps == before:
                return done()


class WorkerProcess:
    """A core running its traced body in `while(true)`."""

    def __init__(self, worker: im.Worker, name: str, cursors: dict, kernels: KernelLookup,
                 scheduler: Scheduler) -> None:  # fmt: skip
        self.worker, self.name, self.scheduler = worker, name, scheduler
        self.cursors: dict[im.ObjectFifoHandle, Cursor] = {h: cursors[h] for h in worker.handles}
        self.buffers = {id(b): _buffer_array(b) for b in worker.buffers}
        self.body = self._compile(worker.body, kernels)
        self.acquired = False  # an acquire succeeded in this iteration of the body
        self.blocked: im.Acquire | None = None
        self.iterations = 0

    def _compile(self, body: list, kernels: KernelLookup) -> list:
        ops: list = []
        for node in body:
            if isinstance(node, im.Loop):
                ops.append(("loop", node.count, self._compile(node.body, kernels)))
            elif isinstance(node, im.Acquire):
                ops.append(("acquire", self._acquirable(node), node))
            elif isinstance(node, im.Release):
                ops.append(("release", self.cursors[node.handle], node.count))
            elif isinstance(node, im.Call):
                ops.append(("call", kernels(node.kernel, self.worker), self._getters(node)))
        return ops

    def _acquirable(self, node: im.Acquire) -> Cursor:
        cursor = self.cursors[node.handle]
        if node.count > cursor.state.capacity:
            raise DataflowError(
                f"{self.name} acquires {node.count} objects of fifo {cursor.state.name}, "
                f"which has {cursor.state.capacity}: it would wait forever"
            )
        return cursor

    def _getters(self, call: im.Call) -> list[Callable[[], Any]]:
        getters = []
        for position, (arg, declared) in enumerate(
            zip(call.args, call.kernel.arg_types, strict=True)
        ):
            if isinstance(arg, int | np.integer):
                getters.append(_constant(int(arg)))
                continue
            shape, dtype = im.element_type(declared)
            if isinstance(arg, im.Element):
                size, have = arg.handle.fifo.nbytes, arg.handle.fifo.shape
                getters.append(_element_getter(self.cursors[arg.handle], arg.index, shape, have))
            else:
                size, have = arg.nbytes, arg.shape
                getters.append(_constant(self.buffers[id(arg)].reshape(shape)))
            if size != math.prod(shape) * dtype.itemsize:
                raise DataflowError(
                    f"{self.name}: {call.kernel.symbol} argument {position} is {have} "
                    f"({size} bytes) where the kernel takes {shape} {dtype}"
                )
        return getters

    def process(self) -> Process:
        while True:
            self.acquired = False
            yield from self._run(self.body)
            self.iterations += 1
            if not self.acquired:
                raise DataflowError(f"{self.name}: its body never acquires, so it never waits")

    def _run(self, ops: list) -> Process:
        scheduler = self.scheduler
        for op in ops:
            kind = op[0]
            if kind == "call":
                op[1](*[get() for get in op[2]])
                scheduler.stats.kernel_calls += 1
                scheduler.steps += 1
            elif kind == "acquire":
                cursor, node = op[1], op[2]
                while not cursor.acquire(node.count):
                    self.blocked = node
                    yield
                self.blocked = None
                self.acquired = True
                scheduler.steps += 1
            elif kind == "release":
                op[1].release(op[2])
                scheduler.steps += 1
            else:
                for _ in range(op[1]):
                    yield from self._run(op[2])

    def problem(self) -> str | None:
        """Why this worker is not done when the launch ends, or None."""
        held = {c.state.name: len(c.held) for c in self.cursors.values() if c.held}
        if self.blocked is not None and not self.acquired and not held:
            return None  # idle at the top of its body
        where = f"blocked at {self.blocked.handle}.acquire({self.blocked.count})" if (
            self.blocked) else "running"  # fmt: skip
        return f"{self.name} is stuck mid-body ({where}, holding {held or 'nothing'})"


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _element_getter(cursor: Cursor, index: int, shape: tuple, have: tuple) -> Callable:
    if tuple(shape) == tuple(have):
        return lambda: cursor.array(index)
    return lambda: cursor.array(index).reshape(shape)


def _buffer_array(buffer: im.Buffer) -> np.ndarray:
    if buffer.initial_value is None:
        return poisoned(buffer.shape, buffer.dtype)
    return np.array(buffer.initial_value, dtype=buffer.dtype).reshape(buffer.shape).copy()


def link_processes(link: im.Link, cursors: dict, name: str, scheduler: Scheduler) -> list:
    """One process per memory-tile DMA channel of the link: each split output (each
    join input) moves its part of every object on its own."""
    if link.kind == "join":
        (out,) = link.outputs
        return [
            _link_part(cursors[(h, 0)], cursors[(out, i)], None, link.offsets[i], name, scheduler)
            for i, h in enumerate(link.inputs)
        ]
    (source,) = link.inputs
    if link.resizes:
        return [resizing_forward(cursors[(source, 0)], cursors[(link.outputs[0], 0)], name,
                                 scheduler)]  # fmt: skip
    return [
        _link_part(cursors[(source, i)], cursors[(h, 0)], link.offsets[i], None, name, scheduler)
        for i, h in enumerate(link.outputs)
    ]


def _link_part(reader: Cursor, writer: Cursor, read_at: int | None, write_at: int | None,
               name: str, scheduler: Scheduler) -> Process:  # fmt: skip
    """Copy every object of `reader` into one of `writer`: from offset `read_at` of
    the input object (split) or to offset `write_at` of the output object (join)."""
    size = (writer if read_at is not None else reader).state.fifo.size
    whole = (reader if read_at is not None else writer).state.fifo.size
    offset = read_at if read_at is not None else write_at
    if offset + size > whole:
        raise DataflowError(
            f"{name}: a part of {size} elements at offset {offset} leaves the {whole}-element "
            f"object of fifo {(reader if read_at is not None else writer).state.name}"
        )
    while True:
        while not reader.acquire(1):
            yield
        while not writer.acquire(1):
            yield
        source, target = reader.array(0).reshape(-1), writer.array(0).reshape(-1)
        if read_at is not None:
            target[...] = source[read_at : read_at + size]
        else:
            target[write_at : write_at + size] = source
        writer.release(1)
        reader.release(1)
        scheduler.steps += 1


def resizing_forward(reader: Cursor, writer: Cursor, name: str, scheduler: Scheduler) -> Process:
    """A forward into smaller objects (im.Link.resizes): every input object, read in
    the output fifo's dims_to_stream order, fills the next size_in / size_out output
    objects one after another."""
    source_fifo, out_fifo = reader.state.fifo, writer.state.fifo
    if source_fifo.size % out_fifo.size:
        raise DataflowError(
            f"{name}: {source_fifo.size}-element objects do not cut into "
            f"{out_fifo.size}-element objects of fifo {out_fifo.name}"
        )
    order = stream_order(out_fifo.dims_to_stream, source_fifo.size, f"{name} memory tile")
    while True:
        while not reader.acquire(1):
            yield
        source = reader.array(0).reshape(-1)
        stream = source if order is None else source[order]
        for start in range(0, source_fifo.size, out_fifo.size):
            while not writer.acquire(1):
                yield
            writer.array(0).reshape(-1)[...] = stream[start : start + out_fifo.size]
            writer.release(1)
            scheduler.steps += 1
        reader.release(1)


@dataclass
class Task:
    """A shim DMA task of the runtime sequence."""

    transfer: im.Transfer
    indices: np.ndarray
    label: str
    moved: int = 0
    freed: bool = False

    @property
    def done(self) -> bool:
        return self.moved == self.indices.size


class ShimChannel:
    """The shim DMA of one runtime handle: its tasks in issue order, each streaming
    host elements into (fill) or out of (drain) consecutive objects; an object a task
    leaves partly done is continued by the next task."""

    def __init__(self, cursor: Cursor, host: list[np.ndarray], scheduler: Scheduler) -> None:
        self.cursor, self.host, self.scheduler = cursor, host, scheduler
        self.queue: deque[Task] = deque()
        self.offset = 0  # elements of the current object already moved

    def process(self) -> Process:
        cursor, size = self.cursor, self.cursor.state.fifo.size
        while True:
            if not self.queue:
                yield
                continue
            task = self.queue[0]
            flat = self.host[task.transfer.host.index].reshape(-1)
            while not task.done:
                while not cursor.acquire(1):
                    yield
                count = min(size - self.offset, task.indices.size - task.moved)
                where = task.indices[task.moved : task.moved + count]
                obj = cursor.array(0).reshape(-1)
                if task.transfer.is_fill:
                    obj[self.offset : self.offset + count] = flat[where]
                else:
                    flat[where] = obj[self.offset : self.offset + count]
                task.moved += count
                self.offset += count
                if self.offset == size:
                    cursor.release(1)
                    self.offset = 0
                self.scheduler.steps += 1
            self.queue.popleft()


class Launch:
    """One recorded program, ready to run on host buffers (its runtime sequence's
    arguments, in order) with kernels from `kernels`."""

    def __init__(self, program: im.Program, kernels: KernelLookup, name: str = "launch"):
        self.program, self.kernels, self.name = program, kernels, name
        self._indices: dict[im.TensorAccessPattern, np.ndarray] = {}

    def run(self, hosts: Sequence[np.ndarray]) -> Stats:
        runtime = self.program.runtime
        self._check_hosts(runtime, hosts)
        scheduler = Scheduler()
        cursors = self._cursors(scheduler.stats)
        workers = [
            WorkerProcess(w, f"{self.name}: worker {i} {w}", cursors, self.kernels, scheduler)
            for i, w in enumerate(self.program.workers)
        ]
        channels = {
            h: ShimChannel(cursors[(h, 0)], list(hosts), scheduler)
            for h in _runtime_handles(self.program)
        }
        links = [
            process
            for i, link in enumerate(self.program.links)
            for process in link_processes(link, cursors, f"{self.name}: {link}", scheduler)
        ]
        tasks: list[Task] = []
        finished = [False]
        sequence = self._sequence(runtime, hosts, channels, tasks, scheduler, finished)
        processes = [sequence, *(w.process() for w in workers), *links]
        processes += [c.process() for c in channels.values()]
        if not scheduler.run(processes, lambda: finished[0]):
            raise DataflowError(self._deadlock(workers, tasks, cursors))
        self._check_end(workers, tasks, cursors)
        return scheduler.stats

    def _check_hosts(self, runtime: im.Runtime, hosts: Sequence[np.ndarray]) -> None:
        if len(hosts) != len(runtime.host_args):
            raise DataflowError(
                f"{self.name}: {len(hosts)} host buffers for {len(runtime.host_args)} arguments"
            )
        for arg, host in zip(runtime.host_args, hosts, strict=True):
            if host.shape != arg.shape or host.dtype != arg.dtype or not host.flags.c_contiguous:
                raise DataflowError(
                    f"{self.name}: argument {arg.index} is {host.shape} {host.dtype}, the "
                    f"sequence takes a contiguous {arg.shape} {arg.dtype}"
                )

    def _cursors(self, stats: Stats) -> dict[tuple[im.ObjectFifoHandle, int], Cursor]:
        """A cursor per (handle, part): a split's input has one consumer slot per output,
        a join's output one writer per input."""
        cursors = {}
        for fifo in self.program.fifos:
            slots = [(handle, part) for handle in fifo.consumers for part in range(_parts(handle))]
            writers = _parts(fifo.producer)
            state = FifoState(fifo, [h for h, _ in slots], writers)
            for index, key in enumerate(slots):
                cursors[key] = Cursor(state, False, index, stats)
            for part in range(writers):
                cursors[(fifo.producer, part)] = Cursor(state, True, 0, stats)
        # a worker's handles have one part: index them by handle too
        cursors.update({key[0]: c for key, c in list(cursors.items()) if key[1] == 0})
        return cursors

    def _sequence(self, runtime, hosts, channels, tasks, scheduler, finished) -> Process:
        for node in runtime.body:
            if isinstance(node, im.Transfer):
                task = Task(node, self._pattern(node, hosts), self._label(node))
                tasks.append(task)
                channels[node.handle].queue.append(task)
                scheduler.steps += 1
            elif isinstance(node, im.Finish):
                group = [t for t in tasks if t.transfer.group is node.group and not t.freed]
                while not all(t.done for t in group if t.transfer.wait):
                    yield
                for task in group:
                    task.freed = True
                    if not task.done:
                        scheduler.stats.warnings.append(
                            f"{self.name}: {task.label} was freed by its group's finish() "
                            f"with {task.moved} of {task.indices.size} elements moved"
                        )
        finished[0] = True

    def _pattern(self, transfer: im.Transfer, hosts: Sequence[np.ndarray]) -> np.ndarray:
        tap = transfer.tap
        if tap not in self._indices:
            self._indices[tap] = tap.indices()
        indices = self._indices[tap]
        size = hosts[transfer.host.index].size
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise DataflowError(
                f"{self.name}: {self._label(transfer)} reaches elements "
                f"[{indices.min()}, {indices.max()}] of a {size}-element buffer"
            )
        return indices

    def _label(self, transfer: im.Transfer) -> str:
        kind = "fill of" if transfer.is_fill else "drain from"
        return f"{kind} fifo {transfer.handle.name} (argument {transfer.host.index})"

    def _deadlock(self, workers, tasks, cursors) -> str:
        lines = [f"{self.name}: deadlock, nothing can move and the runtime sequence waits"]
        lines += [f"  {t.label}: {t.moved} of {t.indices.size} elements" for t in tasks
                  if not t.done]  # fmt: skip
        for worker in workers:
            at = worker.blocked
            where = f"waits in {at.handle}.acquire({at.count})" if at else "is not blocked"
            lines.append(f"  {worker.name} {where} after {worker.iterations} iterations")
        lines += [f"  {problem}" for problem in _leftovers(cursors)]
        return "\n".join(lines)

    def _check_end(self, workers, tasks, cursors) -> None:
        problems = [f"{t.label} moved {t.moved} of {t.indices.size} elements"
                    for t in tasks if not t.done]  # fmt: skip
        problems += [p for p in (w.problem() for w in workers) if p]
        problems += _leftovers(cursors)
        if problems:
            raise DataflowError(f"{self.name}: at the end of the launch " + "; ".join(problems))


def _parts(handle: im.ObjectFifoHandle | None) -> int:
    """How many independent channels serve a handle: a split's input feeds one per
    output, a join's output is written by one per input."""
    if handle is None:
        return 1
    link = handle.endpoint
    if isinstance(link, im.Link) and len(link.outputs) > 1 and handle in link.inputs:
        return len(link.outputs)
    if isinstance(link, im.Link) and len(link.inputs) > 1 and handle in link.outputs:
        return len(link.inputs)
    return 1


def _runtime_handles(program: im.Program) -> list[im.ObjectFifoHandle]:
    handles = {t.handle: None for t in program.runtime.transfers()}
    return list(handles)


def _leftovers(cursors: dict) -> list[str]:
    states = {id(c.state): c.state for c in cursors.values()}
    return [p for p in (s.leftover() for s in states.values()) if p]
