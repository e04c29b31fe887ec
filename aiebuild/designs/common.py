"""What every IRON design shares: kernel objects, tensor types, the core memory a
design places (and its budget), the lazy mlir-aie import and the resolution of a
program to MLIR text."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from aiebuild import iron_model
from aierun.abi import ArgSpec, Launch, parse_binding
from aierun.errors import UserError

KERNELS_SRC = Path(__file__).resolve().parents[2] / "kernels_src"
# Every -D parameter gets this prefix: an unprefixed `-DE=576` or `-DK=2048` would
# rewrite identifiers named E or K inside aie_api and libstdc++ headers.
MACRO_PREFIX = "AIEK_"
# Data memory beside one AIE2P compute core, and the part of it aie.core reserves
# for the stack by default (kernel locals such as flash_attn's score row live there).
CORE_DATA_MEMORY = 64 * 1024
CORE_STACK = 1024


@dataclass(frozen=True)
class KernelObject:
    """One compiled kernel instance: a source file and its -D parameters."""

    source: Path
    defines: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """The object's file name, as designs link it (`link_with`)."""
        tag = hashlib.sha256(repr(self.defines).encode()).hexdigest()[:10]
        return f"{self.source.stem}_{tag}.o"

    def flags(self) -> list[str]:
        return [f"-D{key}={value}" for key, value in self.defines]


def kernel_object(kernel: str, defines: dict[str, Any]) -> KernelObject:
    """`kernel` (a file in kernels_src/) compiled with `defines` as -D macros, each
    named with MACRO_PREFIX (`{"TM": 32}` -> `-DAIEK_TM=32`)."""
    macros = sorted((MACRO_PREFIX + key, _macro(value)) for key, value in defines.items())
    return KernelObject(KERNELS_SRC / kernel, tuple(macros))


def _macro(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value!r}f"  # a float literal: the kernels compute in fp32
    return str(value)


@dataclass(frozen=True)
class CoreBuffer:
    """One region a design places in its compute core's data memory: the `depth`
    buffers of an ObjectFifo that ends at the core, a core-local working buffer, or
    a state buffer (zero-initialized: it carries the kernel's loop counters). The
    design creates its fifos and buffers from these, so the memory budget
    (`core_memory_problem`) counts exactly what the design places."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    depth: int = 2  # double buffering: the DMA fills one while the core works on the other
    kind: str = "fifo"  # "fifo", "buffer" or "state"

    @property
    def type(self) -> type:
        return tensor(self.shape, self.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize * (self.depth if self.is_fifo else 1)

    @property
    def is_fifo(self) -> bool:
        return self.kind == "fifo"

    def make(self, lib: Any) -> Any:
        if self.is_fifo:
            return lib.ObjectFifo(self.type, name=self.name, depth=self.depth)
        initial = np.zeros(self.shape, self.dtype) if self.kind == "state" else None
        return lib.Buffer(self.type, initial_value=initial, name=self.name)


def core_memory_problem(buffers: list[CoreBuffer]) -> str | None:
    """Why these buffers do not fit one core's data memory, or None when they do."""
    used = sum(b.nbytes for b in buffers) + CORE_STACK
    if used <= CORE_DATA_MEMORY:
        return None
    parts = ", ".join(f"{b.name} {b.nbytes}" for b in buffers)
    return (
        f"its core needs {used} bytes of data memory ({parts}, stack {CORE_STACK}) but an "
        f"AIE2P core has {CORE_DATA_MEMORY}"
    )


def slice_offset(launch: Launch, args: list[ArgSpec], position: int) -> int:
    """Element offset, in the whole host argument, of what the launch's argument at
    `position` binds: 0 for a whole argument, `index` rows of the leading axis in for
    a slice such as `w_lm[3]`. The runtime sequence takes the whole argument and the
    DMA access pattern starts at this offset (no strided memref in the stitcher)."""
    _, index = parse_binding((*launch.inputs, *launch.outputs)[position])
    return (index or 0) * math.prod(args[position].shape[1:])


def iron() -> SimpleNamespace:
    """The IRON API a design builds with: inside `iron_model.recording()` the recorded
    model (for the rules check, the simulator and the time model), else the real
    `aie.iron` of mlir-aie >= 1.4, imported only when a design runs for MLIR."""
    if iron_model.active():
        return iron_model.API
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


def stream_program(
    args: list[ArgSpec],
    fills: list[tuple[Any, list[Any] | None]],
    drains: list[tuple[Any, list[Any] | None]],
    workers: list[Any],
) -> Any:
    """The usual runtime sequence: fill each input's producer handle from its host
    buffer and drain each output's consumer handle into its host buffer.
    `fills` / `drains` pair a handle with its access patterns, in the order of the
    launch's inputs / outputs: None moves the whole buffer in one transfer (in a
    one-phase launch); a list holds one pattern per phase, every list equally long.
    Phase i issues pattern i of every handle in its own task group and finishes it
    (awaits its drains, frees its tasks) before phase i+1, so a launch holds one
    task per handle at a time: a shim tile has only about 16 buffer descriptors."""
    lib = iron()
    transfers = [*fills, *drains]
    phases = _phase_count([patterns for _, patterns in transfers])

    def sequence(*values):
        buffers, bound = values[: len(args)], values[len(args) :]
        for phase in range(phases):  # the runtime sequence, not core program memory
            group = lib.TaskGroup()
            for index, (buffer, handle) in enumerate(zip(buffers, bound, strict=True)):
                patterns = transfers[index][1]
                pattern = None if patterns is None else patterns[phase]
                if index < len(fills):
                    handle.fill(buffer, tap=pattern, group=group)
                else:
                    handle.drain(buffer, tap=pattern, wait=True, group=group)
            group.finish()

    handles = [handle for handle, _ in transfers]
    return program(lib.Runtime(sequence, [*host_types(args), *handles]), workers)


def _phase_count(patterns: list[list[Any] | None]) -> int:
    lengths = {len(p) for p in patterns if p is not None}
    # A whole-buffer transfer (None) happens once: only in a one-phase launch.
    if len(lengths) > 1 or (lengths - {1} and None in patterns):
        raise ValueError(f"a launch's transfers have different phase counts: {patterns}")
    return lengths.pop() if lengths else 1


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
