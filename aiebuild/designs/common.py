"""What every IRON design shares: kernel objects, tensor types, the lazy mlir-aie
import and the resolution of a program to MLIR text."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aierun.abi import ArgSpec
from aierun.errors import UserError

KERNELS_SRC = Path(__file__).resolve().parents[2] / "kernels_src"
# Tile edge of every GEMM/GEMV dimension (aiebuild.specs.TILE checks models against it).
TILE = 64


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
    """`kernel` (a file in kernels_src/) compiled with `defines` as -D macros."""
    return KernelObject(
        KERNELS_SRC / kernel, tuple(sorted((k, _macro(v)) for k, v in defines.items()))
    )


def _macro(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value!r}f"  # a float literal: the kernels compute in fp32
    return str(value)


def iron():
    """The `aie.iron` module of mlir-aie >= 1.4, imported only when a design runs."""
    try:
        import aie.iron
    except ImportError as exc:
        raise UserError(
            "building for npu2 needs the mlir-aie Python package (aie.iron, >= 1.4), which "
            f"is not importable here ({exc}). Install the mlir_aie wheel or build with "
            "`doit compile target=emu`."
        ) from exc
    return aie.iron


def tensor(shape: tuple[int, ...] | int, dtype: np.dtype) -> type:
    """The numpy array type IRON takes for buffers and ObjectFifo elements."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    return np.ndarray[dims, np.dtype[dtype.type]]


def host_types(args: list[ArgSpec]) -> list[type]:
    return [tensor(a.shape, a.np_dtype) for a in args]


def resolve(runtime: Any, workers: list[Any]) -> str:
    """MLIR text of a one-launch program on the whole NPU2 array (8 columns)."""
    from aie.iron.device import NPU2

    program = iron().Program(NPU2(), runtime, workers=workers)
    return str(program.resolve_program())


def tiles(extent: int, tile: int, what: str) -> int:
    if extent % tile:
        raise UserError(f"{what} = {extent} is not a multiple of the kernel tile {tile}")
    return extent // tile


def tap(dims: tuple[int, ...], offset: int, sizes: list[int], strides: list[int]) -> Any:
    """A shim DMA access pattern over a host buffer (at most 4 dimensions)."""
    from aie.helpers.taplib import TensorAccessPattern

    return TensorAccessPattern(dims, offset, sizes, strides)


def stream_program(
    args: list[ArgSpec],
    fills: list[tuple[Any, list[Any] | None]],
    drains: list[tuple[Any, list[Any] | None]],
    workers: list[Any],
) -> str:
    """The usual runtime sequence: fill each input's producer handle from its host
    buffer (one DMA task per access pattern, or the whole buffer), drain each
    output's consumer handle into its host buffer, all in one task group that
    waits for the drains. `fills` / `drains` pair a handle with its patterns, in
    the order of the launch's inputs / outputs."""
    lib = iron()
    handles = [handle for handle, _ in (*fills, *drains)]
    patterns = [pattern for _, pattern in (*fills, *drains)]

    def sequence(*values):
        buffers, bound = values[: len(args)], values[len(args) :]
        group = lib.TaskGroup()
        for index, (buffer, handle) in enumerate(zip(buffers, bound, strict=True)):
            for pattern in patterns[index] or [None]:
                if index < len(fills):
                    handle.fill(buffer, tap=pattern, group=group)
                else:
                    handle.drain(buffer, tap=pattern, wait=True, group=group)
        group.finish()

    return resolve(lib.Runtime(sequence, [*host_types(args), *handles]), workers)


def streaming_core(steps: int):
    """A worker body for kernels that consume one buffer of every input fifo and
    produce one output buffer per call, `steps` times (worker args: the fifo
    handles in kernel-argument order, then the kernel)."""
    from aie.iron.controlflow import range_

    def core(*handles):
        *fifos, kernel_fn = handles
        for _ in range_(steps):
            kernel_fn(*(fifo.acquire(1) for fifo in fifos))
            for fifo in fifos:
                fifo.release(1)

    return core
