"""What every op shares: the `Op` record the registry keeps of each, kernel objects with
typed -D parameters, tensor types, the tiles of the array, the runtime sequence of shim
streams, and the one seam to IRON (`iron()`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from aiebuild.array import geometry, iron_record
from aiebuild.sim.compare import DEFAULT_TOLERANCE, Tolerance
from aierun.abi import ArgSpec, Launch, parse_binding
from aierun.errors import UserError

KERNELS_SRC = Path(__file__).resolve().parents[2] / "kernels_src"
# Every -D parameter gets this prefix: an unprefixed `-DE=576` or `-DK=2048` would
# rewrite identifiers named E or K inside aie_api and libstdc++ headers.
MACRO_PREFIX = "AIEK_"
# Repeats of a shim access pattern's outermost dimension (aiebuild/array/rules.py
# ITERATION_SIZE_MAX): a longer transfer is moved in phases.
SHIM_ITERATIONS = 64


@dataclass(frozen=True)
class KernelObject:
    """One compiled kernel instance: a source file and its -D parameters, kept typed
    (the designs read them as numbers) and rendered as macros for the compiler."""

    source: Path
    params: tuple[tuple[str, int | float | bool | str], ...]  # sorted by name

    @property
    def defines(self) -> tuple[tuple[str, str], ...]:
        """(macro, value) pairs, each named with MACRO_PREFIX (`TM` -> `AIEK_TM`)."""
        return tuple((MACRO_PREFIX + key, _macro(value)) for key, value in self.params)

    @property
    def values(self) -> dict[str, int | float | bool | str]:
        return dict(self.params)

    @property
    def name(self) -> str:
        """The object's file name, as designs link it (`link_with`)."""
        tag = hashlib.sha256(repr(self.defines).encode()).hexdigest()[:10]
        return f"{self.source.stem}_{tag}.o"

    def flags(self) -> list[str]:
        return [f"-D{key}={value}" for key, value in self.defines]


def kernel_object(kernel: str, params: Mapping[str, Any]) -> KernelObject:
    """`kernel` (a file in kernels_src/) compiled with `params` as -D macros
    (`{"TM": 32}` -> `-DAIEK_TM=32`)."""
    return KernelObject(KERNELS_SRC / kernel, tuple(sorted(params.items())))


def _macro(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value!r}f"  # a float literal: the kernels compute in fp32
    return str(value)


Design = Callable[[Launch, list[ArgSpec]], Any]  # the IRON program of one launch
KernelFn = Callable[[Launch, list[ArgSpec]], KernelObject]
FlopsFn = Callable[[Launch, list[ArgSpec]], int]
# (entry point symbol, the recorded call's arguments) -> the arguments to count it with
CountArgsFn = Callable[[str, list[Any]], list[Any]]
# (launch, entry point symbol) -> share of its calls that do no work on any core
IdleShareFn = Callable[[Launch, str], float]


def as_recorded(symbol: str, args: list[Any]) -> list[Any]:
    """Count an entry point on the recorded call's arguments as they are."""
    return args


def never_idle(launch: Launch, symbol: str) -> float:
    """Every call of the entry point does its work."""
    return 0.0


@dataclass(frozen=True)
class Op:
    """Everything the build knows of one op of the launch vocabulary, in its module
    aiebuild/ops/<module>.py (its emulation is aierun/ops/<module>.py):

    - `design(launch, args)`: the IRON program of one launch, over the launch's
      arguments (inputs then outputs, whole ELF arguments);
    - `kernel(launch, args)`: the kernel object it links, with typed -D parameters;
    - `flops(launch, args)`: the arithmetic of one launch (the roofline's FLOPs; its
      DDR bytes are its operands' and results' sizes, the same for every op);
    - `tolerance`: how far `doit simulate` lets the kernel's C++ differ from emu;
    - `count_args(symbol, args)`: the arguments the npu2 time model runs an entry point
      on to count what it issues (aiebuild/array/kernel_counts.py), from the recorded
      call's: an op whose kernel branches on its state picks the typical call;
    - `idle_share(launch, symbol)`: the share of the entry point's calls in which every
      core that shares the call's broadcast skips the work (they move in lockstep, so
      a step costs the slowest core's work unless all skip)."""

    name: str
    design: Design
    kernel: KernelFn
    flops: FlopsFn
    tolerance: Tolerance = field(default=DEFAULT_TOLERANCE)
    count_args: CountArgsFn = as_recorded
    idle_share: IdleShareFn = never_idle

    @property
    def module(self) -> Path:
        """The op's source file (part of every content key of an ELF that uses it)."""
        return Path(self.design.__code__.co_filename)


def output_elements(launch: Launch, args: list[ArgSpec]) -> int:
    """Elements of the launch's first output (an elementwise op's work)."""
    output = args[len(launch.inputs)]
    _, index = parse_binding(launch.outputs[0])
    return math.prod(output.shape[1:] if index is not None else output.shape)


def slice_offset(launch: Launch, args: list[ArgSpec], position: int) -> int:
    """Element offset, in the whole host argument, of what the launch's argument at
    `position` binds: 0 for a whole argument, `index` rows of the leading axis in for
    a slice such as `w_lm[3]`. The runtime sequence takes the whole argument and the
    DMA access pattern starts at this offset (no strided memref in the stitcher)."""
    _, index = parse_binding((*launch.inputs, *launch.outputs)[position])
    return (index or 0) * math.prod(args[position].shape[1:])


def iron() -> SimpleNamespace:
    """The IRON API a design builds with: inside `iron_record.recording()` the recorded
    model (for the rules check, the simulator and the time model), else the real
    `aie.iron` of mlir-aie >= 1.4, imported only when a design runs for MLIR."""
    if iron_record.active():
        return iron_record.API
    try:
        import aie.iron
        from aie.helpers.taplib import TensorAccessPattern
        from aie.iron.controlflow import range_
        from aie.iron.device import NPU2, Tile
    except ImportError as exc:
        raise UserError(
            "building for npu2 needs the mlir-aie Python package (aie.iron, >= 1.4), which "
            f"is not importable here ({exc}). Install the mlir_aie wheel or build with "
            "`doit compile target=emu`."
        ) from exc
    names = ("ObjectFifo", "Buffer", "Kernel", "Worker", "Runtime", "TaskGroup", "Program")
    return SimpleNamespace(
        **{name: getattr(aie.iron, name) for name in names},
        range_=range_,
        TensorAccessPattern=TensorAccessPattern,
        Tile=Tile,
        NPU2=NPU2,
    )


def tensor(shape: tuple[int, ...] | int, dtype: np.dtype) -> type:
    """The numpy array type IRON takes for buffers and ObjectFifo elements."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    return np.ndarray[dims, np.dtype[dtype.type]]


def host_types(args: list[ArgSpec]) -> list[type]:
    return [tensor(a.shape, a.np_dtype) for a in args]


def program(runtime: Any, workers: list[Any]) -> Any:
    """A one-launch program on the whole NPU2 array (8 columns), unresolved: the
    recorded model's Program is the record itself, the real one resolves to MLIR."""
    lib = iron()
    return lib.Program(lib.NPU2(), runtime, workers=workers)


def tiles(extent: int, tile: int, what: str) -> int:
    if extent % tile:
        raise UserError(f"{what} = {extent} is not a multiple of the kernel tile {tile}")
    return extent // tile


def tap(dims: tuple[int, ...], offset: int, sizes: list[int], strides: list[int]) -> Any:
    """A shim DMA access pattern over a host buffer (at most 4 dimensions)."""
    return iron().TensorAccessPattern(dims, offset, sizes, strides)


@dataclass(frozen=True)
class Stream:
    """One shim DMA stream of a launch: `handle` (a fifo's producer to fill, or its
    consumer to drain) moves the launch argument at position `arg`, with one access
    pattern per phase of the runtime sequence (None: nothing in that phase)."""

    arg: int
    handle: Any
    patterns: list[Any | None]
    drain: bool = False
    # Further transfers of the same fifo in the first phase, after its pattern, each
    # (argument position, pattern): objects of several arguments through one channel
    # (a vector and the weight a core holds beside it; rope's q rows, then its k rows).
    then: tuple[tuple[int, Any], ...] = ()


def once(pattern: Any, phases: int) -> list[Any | None]:
    """A stream that moves `pattern` in the first phase only (e.g. a resident vector)."""
    return [pattern] + [None] * (phases - 1)


def contiguous(dims: tuple[int, ...], offset: int, length: int) -> Any:
    """`length` consecutive elements from `offset`: one linear shim transfer."""
    return tap(dims, offset, [1, 1, 1, length], [0, 0, 0, 1])


def stream_program(args: list[ArgSpec], streams: list[Stream], workers: list[Any]) -> Any:
    """The runtime sequence of a launch: phase i starts pattern i of every stream in
    one task group and finishes it (awaits its drains, frees its tasks) before phase
    i+1, so a shim holds only the few tasks of one phase (it has 16 buffer
    descriptors). The sequence is Python-unrolled: it lives in the runtime
    instruction stream, not in core program memory."""
    lib = iron()
    phases = {len(s.patterns) for s in streams}
    if len(phases) != 1:
        raise ValueError(f"a launch's streams have different phase counts: {sorted(phases)}")

    def sequence(*values):
        buffers, handles = values[: len(args)], values[len(args) :]
        for phase in range(phases.pop()):
            group = lib.TaskGroup()
            for stream, handle in zip(streams, handles, strict=True):
                pattern = stream.patterns[phase]
                if pattern is None:
                    continue
                for arg, move in ((stream.arg, pattern), *(stream.then if phase == 0 else ())):
                    if stream.drain:
                        handle.drain(buffers[arg], tap=move, wait=True, group=group)
                    else:
                        handle.fill(buffers[arg], tap=move, group=group)
            group.finish()

    handles = [s.handle for s in streams]
    return program(lib.Runtime(sequence, [*host_types(args), *handles]), workers)


def core_tile(lib: Any, column: int, row: int) -> Any:
    """Compute core `row` (counted from 0) of `column`."""
    return lib.Tile(column, geometry.FIRST_CORE_ROW + row)


def mem_tile(lib: Any, column: int) -> Any:
    return lib.Tile(column, geometry.MEM_ROW)


def shim_tile(lib: Any, column: int) -> Any:
    return lib.Tile(column, geometry.SHIM_ROW)


def array(launch: Launch) -> tuple[int, int]:
    """The columns x core rows the launch's spec gives it (aiebuild/specs.py)."""
    return launch.params["columns"], launch.params["core_rows"]


def joined_columns(
    lib: Any, name: str, columns: int, rows: int, part: tuple[int, ...], dtype: np.dtype
) -> tuple[list[Any], list[list[Any]]]:
    """Per column, one fifo `<name><c>` for its shim to drain, joined in the column's
    memory tile from one `part`-shaped object per core row (`<name><c>_<r>`, in row
    order). Returns the columns' fifos and, per column, its cores' part fifos."""
    size = math.prod(part)
    outs = [
        lib.ObjectFifo(tensor((rows * size,), dtype), name=f"{name}{c}") for c in range(columns)
    ]
    parts = [
        outs[c].prod().join([r * size for r in range(rows)], tile=mem_tile(lib, c),
                            obj_types=[tensor(part, dtype)] * rows,
                            names=[f"{name}{c}_{r}" for r in range(rows)])
        for c in range(columns)
    ]  # fmt: skip
    return outs, parts


def state_buffer(lib: Any, name: str, values: np.ndarray) -> Any:
    """A core-local buffer with initial values (e.g. a kernel's loop counters)."""
    return lib.Buffer(tensor(values.shape, values.dtype), initial_value=values, name=name)


def scratch_buffer(lib: Any, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """A core-local working buffer (e.g. an fp32 accumulator), zero-initialized."""
    return state_buffer(lib, name, np.zeros(shape, dtype))


def row_streams(
    lib: Any,
    args: list[ArgSpec],
    columns: int,
    rows: int,
    names: list[str],
    per_row: list[tuple[int, ...]],
    resident: dict[int, Any] | None = None,
) -> tuple[list[list[Any]], list[Stream]]:
    """Row-wise launches (rmsnorm, rope, eltwise): `rows` items over `columns` cores
    (core row 0 of each column), each column streaming its consecutive block of
    items straight from and to its own shim. Argument i moves items of shape
    `per_row[i]` (inputs, then the one output last); an argument in `resident` is
    instead one object (of that type) broadcast once from shim 0 to every core.
    Returns per column the worker's fifo handles in argument order, and the streams."""
    resident = resident or {}
    block = rows // columns
    handles: list[list[Any]] = [[] for _ in range(columns)]
    streams = []
    for i, (name, shape) in enumerate(zip(names, per_row, strict=True)):
        out = i == len(names) - 1
        if i in resident:
            fifo = lib.ObjectFifo(resident[i], depth=1, name=name)
            streams.append(Stream(i, fifo.prod(tile=shim_tile(lib, 0)), [whole(args[i])]))
            for column in range(columns):
                handles[column].append(fifo.cons())
            continue
        size = math.prod(shape)
        for column in range(columns):
            fifo = lib.ObjectFifo(tensor(shape, args[i].np_dtype), name=f"{name}{column}")
            end = (
                fifo.cons(tile=shim_tile(lib, column))
                if out
                else fifo.prod(tile=shim_tile(lib, column))
            )
            handles[column].append(fifo.prod() if out else fifo.cons())
            pattern = contiguous(args[i].shape, column * block * size, block * size)
            streams.append(Stream(i, end, [pattern], drain=out))
    return handles, streams


def whole(arg: ArgSpec) -> Any:
    return contiguous(arg.shape, 0, math.prod(arg.shape))


def streaming_core(steps: int):
    """A worker body for kernels that consume one buffer of every input fifo and
    produce one output buffer per call, `steps` times (worker args: the fifo
    handles in kernel-argument order, then the kernel)."""
    range_ = iron().range_

    def core(*handles):
        *fifos, kernel_fn = handles
        for _ in range_(steps):
            kernel_fn(*(fifo.acquire(1) for fifo in fifos))
            for fifo in fifos:
                fifo.release(1)

    return core


def resident_row_core(rows: int):
    """A worker body for kernels called once per streamed row with one operand resident
    for the whole launch (a norm's weight, a bias row): acquired once, then `rows` calls
    (worker args: the row fifo, the resident fifo, the output fifo, the kernel)."""
    range_ = iron().range_

    def core(x, resident, y, kernel_fn):
        held = resident.acquire(1)
        for _ in range_(rows):
            kernel_fn(x.acquire(1), held, y.acquire(1))
            x.release(1)
            y.release(1)
        resident.release(1)

    return core
