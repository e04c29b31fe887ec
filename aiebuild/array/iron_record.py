"""The recorded model of an IRON program: the subset of mlir-aie 1.4's `aie.iron` API
that our designs use, recording what a design builds instead of emitting MLIR.

Every design reaches IRON through one seam, `ops.common.iron()`. Inside
`recording()` that seam hands out this module's `API`, so running a design yields a
`Program`: its ObjectFifos and their memory-tile links (split, join, forward), its
buffers, its workers with their traced core bodies (loops, acquires, releases, kernel
calls) and its runtime sequence (fills and drains with their access patterns, task
groups). The hardware rules check (`aiebuild/array/rules.py`), the dataflow simulator
(`aiebuild/sim/`) and the npu2 time model (`aiebuild/array/timing.py`) all read this one
record; the MLIR aiecc compiles comes from the same design run against the real
`aie.iron`. There is no second description of a design that could drift.

Signatures and semantics follow mlir-aie v1.4.0 (db06374), python/iron/:
- `ObjectFifo(obj_type, *, depth=2, name=None, dims_to_stream=None, repeat_count=None)`,
  `.prod()` (one producer handle), `.cons()` (a new consumer handle per call), handles'
  `acquire(n)` / `release(n)`, `split` / `join` / `forward` on a memory tile
  (dataflow/objectfifo.py; a link's sub-fifos are named `<name>_split<i>`,
  `<name>_join<i>`, `<name>_fwd` by default);
- `Worker(core_fn, fn_args, tile=AnyComputeTile, stack_size=None)`: the body runs once at
  resolve time; loops written with `range_` become `scf.for` (traced once, as here), and
  the body is wrapped in `while(true)` (worker.py `while_true=True`);
- `Runtime(seq_fn, fn_args)`: tensor types in `fn_args` become runtime buffers, fifo
  handles pass through; in the body `handle.fill(src, tap, wait, group)` and
  `handle.drain(dst, tap, wait, group)` start a shim DMA task at once, and
  `TaskGroup.finish()` awaits the group's waited tasks and then frees all of them
  (runtime/runtime.py `finish_task_group`, `emit_transfer`: a waited task is awaited
  and freed); transfers with no group go to the default group, finished at the end;
- `Kernel(name, object_file_name, arg_types)`; a call checks its arguments (an N-D fifo
  element may feed a 1-D parameter of the same element count: kernel.py's implicit
  `memref.collapse_shape`);
- `TensorAccessPattern(tensor_dims, offset, sizes, strides)` (helpers/taplib), sizes
  and strides highest dimension first.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from aiebuild.array import geometry


def element_type(obj_type: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an IRON tensor type `np.ndarray[(dims,), np.dtype[T]]`."""
    dims, dtype = typing.get_args(obj_type)
    (scalar,) = typing.get_args(dtype)
    return tuple(dims), np.dtype(scalar)


@dataclass(frozen=True)
class Tile:
    """A tile of the array; None coordinates are left to the placer."""

    col: int | None = None
    row: int | None = None


class NPU2:
    """The AIE2P array of Strix / Krackan (docs/hardware.md section 1)."""

    name = "npu2"
    columns = geometry.COLUMNS
    rows = geometry.ROWS  # row 0 shims, row 1 memory tiles, then the compute cores


# --- what a core body and a runtime sequence record ---------------------------------


@dataclass
class Loop:
    count: int
    body: list = field(default_factory=list)


@dataclass
class Acquire:
    handle: ObjectFifoHandle
    count: int


@dataclass
class Release:
    handle: ObjectFifoHandle
    count: int


@dataclass(frozen=True)
class Element:
    """The `index`-th element a handle holds acquired when the call runs."""

    handle: ObjectFifoHandle
    index: int = 0


@dataclass
class Call:
    kernel: Kernel
    args: tuple  # Element, Buffer or int per kernel parameter


@dataclass(frozen=True)
class HostArg:
    """One runtime buffer of the sequence (an argument of the launch)."""

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass
class Transfer:
    """A shim DMA task: `handle.fill(host, tap)` (a producer handle) or
    `handle.drain(host, tap)` (a consumer handle)."""

    handle: ObjectFifoHandle
    host: HostArg
    tap: TensorAccessPattern
    wait: bool
    group: TaskGroup

    @property
    def is_fill(self) -> bool:
        return self.handle.is_prod


@dataclass
class Finish:
    """`TaskGroup.finish()`: await the group's waited tasks, then free them all."""

    group: TaskGroup


class _Recording:
    """What one design run creates, and the trace being written."""

    def __init__(self) -> None:
        self.fifos: list[ObjectFifo] = []
        self.links: list[Link] = []
        self.buffers: list[Buffer] = []
        self.trace: list[list] = []  # stack: the innermost open body is last
        self.names = itertools.count()
        self.groups = itertools.count()


_active: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar(
    "iron_recording", default=None
)


def _recording() -> _Recording:
    rec = _active.get()
    if rec is None:
        raise RuntimeError("IRON objects of the recorded model are made inside recording()")
    return rec


def _emit(node: Any) -> None:
    trace = _recording().trace
    if not trace:
        raise RuntimeError(f"{type(node).__name__} outside a core body or runtime sequence")
    trace[-1].append(node)


@contextlib.contextmanager
def _tracing(body: list) -> Iterator[list]:
    rec = _recording()
    rec.trace.append(body)
    try:
        yield body
    finally:
        rec.trace.pop()


# --- dataflow -----------------------------------------------------------------------


class ObjectFifo:
    def __init__(
        self,
        obj_type: Any,
        *,
        depth: int = 2,
        name: str | None = None,
        dims_to_stream: list[tuple[int, int]] | None = None,
        dims_from_stream_per_cons: list[tuple[int, int]] | None = None,
        repeat_count: int | None = None,
    ) -> None:
        rec = _recording()
        if depth < 1:
            raise ValueError(f"ObjectFifo depth must be > 0, got {depth}")
        self.obj_type = obj_type
        self.shape, self.dtype = element_type(obj_type)
        self.depth = depth
        self.name = name or f"of{next(rec.names)}"
        self.dims_to_stream = list(dims_to_stream or [])
        self.dims_from_stream = list(dims_from_stream_per_cons or [])
        self.repeat_count = repeat_count
        self.producer: ObjectFifoHandle | None = None
        self.consumers: list[ObjectFifoHandle] = []
        rec.fifos.append(self)

    @property
    def size(self) -> int:
        """Elements per object."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def prod(self, depth: int | None = None, tile: Tile | None = None) -> ObjectFifoHandle:
        if self.producer is None:
            self.producer = ObjectFifoHandle(self, True, depth or self.depth, tile)
        return self.producer

    def cons(
        self,
        depth: int | None = None,
        dims_from_stream: list[tuple[int, int]] | None = None,
        tile: Tile | None = None,
    ) -> ObjectFifoHandle:
        handle = ObjectFifoHandle(self, False, depth or self.depth, tile)
        handle.dims_from_stream = list(dims_from_stream or self.dims_from_stream)
        self.consumers.append(handle)
        return handle

    def __repr__(self) -> str:
        return f"ObjectFifo({self.name}, {self.shape}, {self.dtype}, depth {self.depth})"


class ObjectFifoHandle:
    """One end of an ObjectFifo: its producer or one of its consumers. Its endpoint
    (a Worker, a memory-tile Link or the Runtime) is bound when something uses it."""

    def __init__(self, fifo: ObjectFifo, is_prod: bool, depth: int, tile: Tile | None) -> None:
        self.fifo, self.is_prod, self.depth = fifo, is_prod, depth
        self.shim_tile = tile  # where a runtime-driven handle's shim DMA is pinned
        self.dims_from_stream: list[tuple[int, int]] = []
        self.endpoint: Worker | Link | Runtime | None = None

    @property
    def name(self) -> str:
        return self.fifo.name

    def bind(self, endpoint: Worker | Link | Runtime) -> None:
        if self.endpoint is not None and self.endpoint is not endpoint:
            raise ValueError(f"{self} is already used by {self.endpoint}")
        self.endpoint = endpoint

    def acquire(self, count: int) -> Element | list[Element]:
        _emit(Acquire(self, count))
        if count == 1:
            return Element(self)
        return [Element(self, i) for i in range(count)]

    def release(self, count: int) -> None:
        _emit(Release(self, count))

    def fill(self, source: HostArg, tap=None, wait=False, group=None, **_):
        if not self.is_prod:
            raise ValueError("fill() is only valid on a producer ObjectFifoHandle")
        return self._transfer(source, tap, wait, group)

    def drain(self, dest: HostArg, tap=None, wait=False, group=None, **_):
        if self.is_prod:
            raise ValueError("drain() is only valid on a consumer ObjectFifoHandle")
        return self._transfer(dest, tap, wait, group)

    def _transfer(self, host: HostArg, tap, wait: bool, group: TaskGroup | None) -> Transfer:
        sequence = _sequence()
        self.bind(sequence.runtime)
        if tap is None:  # the whole buffer, in order
            tap = TensorAccessPattern(host.shape, 0, [1, 1, 1, math.prod(host.shape)], [0, 0, 0, 1])
        transfer = Transfer(self, host, tap, wait, group or sequence.default_group)
        _emit(transfer)
        return transfer

    def split(
        self,
        offsets: list[int],
        tile: Tile | None = None,
        depths: list[int] | None = None,
        obj_types: list[Any] | None = None,
        names: list[str] | None = None,
        dims_to_stream: list | None = None,
        dims_from_stream: list | None = None,
        repeat_counts: list | None = None,
    ) -> list[ObjectFifo]:
        """The consumer's objects cut at `offsets` into new fifos' producers (memory tile)."""
        if self.is_prod:
            raise ValueError("Cannot split() a producer ObjectFifoHandle")
        subs = self._subfifos("split", offsets, depths, obj_types, names, dims_to_stream,
                              dims_from_stream, repeat_counts)  # fmt: skip
        Link([self], [s.prod() for s in subs], offsets, tile, "split")
        return subs

    def join(
        self,
        offsets: list[int],
        tile: Tile | None = None,
        depths: list[int] | None = None,
        obj_types: list[Any] | None = None,
        names: list[str] | None = None,
        dims_to_stream: list | None = None,
        dims_from_stream: list | None = None,
        repeat_counts: list | None = None,
    ) -> list[ObjectFifo]:
        """New fifos' objects placed at `offsets` of this producer's objects (memory tile)."""
        if not self.is_prod:
            raise ValueError("Cannot join() a consumer ObjectFifoHandle")
        subs = self._subfifos("join", offsets, depths, obj_types, names, dims_to_stream,
                              dims_from_stream, repeat_counts)  # fmt: skip
        Link([s.cons() for s in subs], [self], offsets, tile, "join")
        return subs

    def forward(
        self,
        tile: Tile | None = None,
        obj_type: Any = None,
        depth: int | None = None,
        name: str | None = None,
        dims_to_stream: list | None = None,
        dims_from_stream: list | None = None,
        repeat_count: int | None = None,
    ) -> ObjectFifo:
        """The same objects through a memory tile, into a new fifo (split at offset 0)."""
        (sub,) = self.split(
            [0], tile, [depth] if depth else None, [obj_type] if obj_type else None,
            [name or f"{self.name}_fwd"], [dims_to_stream] if dims_to_stream else None,
            [dims_from_stream] if dims_from_stream else None, [repeat_count],
        )  # fmt: skip
        return sub

    def _subfifos(self, kind, offsets, depths, obj_types, names, to_stream, from_stream, repeats):
        count = len(offsets)
        depths = depths or [self.depth] * count
        obj_types = obj_types or [self.fifo.obj_type] * count
        names = names or [f"{self.name}_{kind}{i}" for i in range(count)]
        to_stream = to_stream or [None] * count
        from_stream = from_stream or [None] * count
        repeats = repeats or [None] * count
        return [
            ObjectFifo(obj_types[i], depth=depths[i], name=names[i], dims_to_stream=to_stream[i],
                       dims_from_stream_per_cons=from_stream[i], repeat_count=repeats[i])
            for i in range(count)
        ]  # fmt: skip

    def __repr__(self) -> str:
        return f"{self.name}.{'prod' if self.is_prod else 'cons'}"


class Link:
    """A memory-tile link: `split` (one consumer in, producers out at `offsets` of the
    input object), `join` (consumers in at `offsets` of the output object), or a
    forward (a split into one)."""

    def __init__(self, inputs, outputs, offsets, tile, kind) -> None:
        self.inputs: list[ObjectFifoHandle] = inputs
        self.outputs: list[ObjectFifoHandle] = outputs
        self.offsets: list[int] = list(offsets)
        self.tile = tile or Tile()
        self.kind = kind
        for handle in (*inputs, *outputs):
            handle.bind(self)
        _recording().links.append(self)

    @property
    def resizes(self) -> bool:
        """A forward into smaller objects: the link's buffers are the input's (the
        bigger side, AIEObjectFifoStatefulTransform.cpp createObjectFifoElements), the
        memory tile streams each whole, in the output's `dims_to_stream` order, and the
        consumer's DMA cuts the stream into its own objects (mlir-aie v1.4.0
        programming_examples/basic/vector_scalar_add: a 64-element memory-tile object
        forwarded as 32-element core objects)."""
        if self.kind != "split" or len(self.outputs) != 1 or self.offsets != [0]:
            return False
        return self.outputs[0].fifo.size < self.inputs[0].fifo.size

    def __repr__(self) -> str:
        return f"Link({self.kind} {self.inputs} -> {self.outputs})"


class Buffer:
    """A region of a core's data memory, zero-initialized or with an initial value."""

    def __init__(self, type=None, initial_value=None, name=None, tile=None) -> None:
        rec = _recording()
        self.type = type
        self.shape, self.dtype = element_type(type)
        self.initial_value = initial_value
        self.name = name or f"buf{next(rec.names)}"
        self.tile = tile
        rec.buffers.append(self)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Kernel:
    """An entry point of a compiled kernel object."""

    def __init__(self, name: str, object_file_name: str, arg_types: list) -> None:
        self.symbol, self.object = name, object_file_name
        self.arg_types = list(arg_types)

    def __call__(self, *args: Any) -> None:
        if len(args) != len(self.arg_types):
            raise TypeError(f"{self.symbol} takes {len(self.arg_types)} args, got {len(args)}")
        for position, (arg, expected) in enumerate(zip(args, self.arg_types, strict=True)):
            self._check(position, arg, expected)
        _emit(Call(self, args))

    def _check(self, position: int, arg: Any, expected: Any) -> None:
        if isinstance(arg, int | np.integer):
            if np.dtype(expected) != np.int32:
                raise TypeError(f"{self.symbol} arg {position}: an int for a {expected}")
            return
        dtype = arg.handle.fifo.dtype if isinstance(arg, Element) else arg.dtype
        shape = arg.handle.fifo.shape if isinstance(arg, Element) else arg.shape
        want_shape, want_dtype = element_type(expected)
        # a contiguous N-D element may feed a 1-D parameter of the same size (collapse_shape)
        same = shape == want_shape or (len(want_shape) == 1 and math.prod(shape) == want_shape[0])
        if dtype != want_dtype or not same:
            raise TypeError(
                f"{self.symbol} arg {position}: {shape} {dtype} where {want_shape} "
                f"{want_dtype} is declared"
            )

    def __repr__(self) -> str:
        return f"Kernel({self.symbol})"


class Worker:
    """A core program: `core_fn(*fn_args)` traced once into `body`, run in a
    `while(true)` loop on the core until the launch ends."""

    def __init__(self, core_fn: Callable, fn_args: list, tile: Tile | None = None,
                 stack_size: int | None = None) -> None:  # fmt: skip
        self.core_fn, self.fn_args = core_fn, list(fn_args)
        self.tile = tile or Tile()
        self.stack_size = stack_size
        self.body: list = []
        for arg in self.fn_args:
            if isinstance(arg, ObjectFifoHandle):
                arg.bind(self)

    @property
    def buffers(self) -> list[Buffer]:
        return [a for a in self.fn_args if isinstance(a, Buffer)]

    @property
    def handles(self) -> list[ObjectFifoHandle]:
        return [a for a in self.fn_args if isinstance(a, ObjectFifoHandle)]

    def trace(self) -> None:
        with _tracing(self.body):
            self.core_fn(*self.fn_args)

    def __repr__(self) -> str:
        return f"Worker({self.tile.col}, {self.tile.row})"


def range_(start: int, stop: int | None = None, step: int = 1) -> Iterator[int]:
    """A loop of the traced body: its body is traced once (IRON emits an scf.for)."""
    count = len(range(start, stop, step)) if stop is not None else len(range(start))
    loop = Loop(count)
    _emit(loop)
    with _tracing(loop.body):
        yield _LOOP_INDEX


class _LoopIndex:
    def __index__(self) -> int:
        raise TypeError("a loop index of the recorded model has no value: pass it nowhere")


_LOOP_INDEX = _LoopIndex()


# --- runtime sequence -----------------------------------------------------------------


class TaskGroup:
    def __init__(self) -> None:
        self.id = next(_recording().groups)

    def finish(self) -> None:
        _emit(Finish(self))

    def __repr__(self) -> str:
        return f"TaskGroup({self.id})"


@dataclass
class _Sequence:
    runtime: Runtime
    default_group: TaskGroup


_sequence_var: contextvars.ContextVar[_Sequence | None] = contextvars.ContextVar(
    "iron_sequence", default=None
)


def _sequence() -> _Sequence:
    sequence = _sequence_var.get()
    if sequence is None:
        raise RuntimeError("fill() and drain() are valid inside the runtime sequence only")
    return sequence


class Runtime:
    """The host side of a launch: `seq_fn` receives one HostArg per tensor type of
    `fn_args` and the other fn_args (fifo handles) unchanged."""

    def __init__(self, seq_fn: Callable, fn_args: list) -> None:
        self.seq_fn, self.fn_args = seq_fn, list(fn_args)
        self.host_args: list[HostArg] = []
        for arg in self.fn_args:
            if isinstance(arg, ObjectFifoHandle):
                arg.bind(self)
            elif not isinstance(arg, Buffer | Kernel | int):
                self.host_args.append(HostArg(len(self.host_args), *element_type(arg)))
        self.body: list = []

    def trace(self) -> None:
        hosts = iter(self.host_args)
        values = [a if isinstance(a, ObjectFifoHandle) else next(hosts) for a in self.fn_args]
        default = TaskGroup()
        token = _sequence_var.set(_Sequence(self, default))
        try:
            with _tracing(self.body):
                self.seq_fn(*values)
                if any(isinstance(n, Transfer) and n.group is default for n in self.body):
                    default.finish()
        finally:
            _sequence_var.reset(token)

    def transfers(self) -> list[Transfer]:
        return [node for node in self.body if isinstance(node, Transfer)]

    def __repr__(self) -> str:
        return "Runtime"


@dataclass(frozen=True)
class TensorAccessPattern:
    tensor_dims: tuple[int, ...]
    offset: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]

    def __init__(self, tensor_dims, offset: int, sizes, strides) -> None:
        if len(sizes) != len(strides):
            raise ValueError(f"sizes {sizes} and strides {strides} differ in length")
        object.__setattr__(self, "tensor_dims", tuple(tensor_dims))
        object.__setattr__(self, "offset", int(offset))
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        object.__setattr__(self, "strides", tuple(int(s) for s in strides))

    @property
    def length(self) -> int:
        """Elements the pattern moves."""
        return math.prod(self.sizes)

    def indices(self) -> np.ndarray:
        """The flat host-buffer index of every element, in transfer order."""
        index = np.full((), self.offset, dtype=np.int64)
        for size, stride in zip(self.sizes, self.strides, strict=True):
            index = index[..., None] + np.arange(size, dtype=np.int64) * stride
        return index.reshape(-1)


# --- the program ------------------------------------------------------------------------


@dataclass
class Program:
    """Everything one launch's design built, traced."""

    device: Any
    runtime: Runtime
    workers: list[Worker]
    fifos: list[ObjectFifo] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    buffers: list[Buffer] = field(default_factory=list)

    def __init__(self, device: Any, runtime: Runtime, workers: list[Worker]) -> None:
        self.device, self.runtime, self.workers = device, runtime, list(workers)
        for worker in self.workers:
            worker.trace()
        runtime.trace()
        rec = _recording()
        self.fifos, self.links, self.buffers = rec.fifos, rec.links, rec.buffers
        self._check_ends()

    def _check_ends(self) -> None:
        for fifo in self.fifos:
            for handle in (fifo.producer, *fifo.consumers):
                if handle is None or handle.endpoint is None:
                    end = "producer" if handle is None or handle.is_prod else "consumer"
                    raise ValueError(f"ObjectFifo {fifo.name} has no {end} endpoint")

    def resolve_program(self) -> Program:
        """The real IRON returns an MLIR module here; the record is its own result."""
        return self


def walk(body: list, repeat: int = 1) -> Iterator[tuple[Any, int]]:
    """Every node of a traced body with how many times it runs (loops multiplied out)."""
    for node in body:
        yield node, repeat
        if isinstance(node, Loop):
            yield from walk(node.body, repeat * node.count)


API = SimpleNamespace(
    ObjectFifo=ObjectFifo,
    Buffer=Buffer,
    Kernel=Kernel,
    Worker=Worker,
    Runtime=Runtime,
    TaskGroup=TaskGroup,
    Program=Program,
    range_=range_,
    TensorAccessPattern=TensorAccessPattern,
    Tile=Tile,
    NPU2=NPU2,
)


@contextlib.contextmanager
def recording() -> Iterator[SimpleNamespace]:
    """Designs run inside this build records (`ops.common.iron()` returns `API`)."""
    token = _active.set(_Recording())
    try:
        yield API
    finally:
        _active.reset(token)


def active() -> bool:
    return _active.get() is not None
