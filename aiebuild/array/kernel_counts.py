"""What one call of a kernel entry point issues, counted by running it once on the host
build of the kernel (aiebuild/sim/host_kernels.py, the host aie_api's counters), and
its cycles on the AIE2P slot model (core_model.py).

The counts depend only on the kernel object (its source, the headers, its -D
parameters, the compiler: the host library's key), the entry point and the arguments
it runs on, so they are cached by those under the build home (`<home>/counts/`). The
arguments are the recorded call's: zeros for ObjectFifo elements, a buffer's initial
value, ints as given; an op may adjust them (`Op.count_args`, e.g. flash_attn's state
for a step below the causal diagonal) so that the counted call is the typical one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aiebuild.array import core_model
from aiebuild.array.iron_record import Buffer, Call, Element
from aiebuild.ops.common import KernelObject
from aiebuild.sim import host_kernels
from aierun import paths
from aierun.abi import canonical_json
from aierun.files import sha256_text, write_json_atomic

Argument = np.ndarray | int
COUNTS_DIR = "counts"


def call_arguments(call: Call) -> list[Argument]:
    """Arguments to run a recorded call with: zeros for its objects, its buffers'
    initial values (or zeros), its ints."""
    out: list[Argument] = []
    for arg in call.args:
        if isinstance(arg, Element):
            out.append(np.zeros(arg.handle.fifo.shape, arg.handle.fifo.dtype))
        elif isinstance(arg, Buffer):
            initial = arg.initial_value
            out.append(np.zeros(arg.shape, arg.dtype) if initial is None else np.array(initial))
        else:
            out.append(int(arg))
    return out


def _digest(args: Sequence[Argument]) -> list:
    return [
        [a.dtype.str, list(a.shape), sha256_text(a.tobytes())]
        if isinstance(a, np.ndarray)
        else int(a)
        for a in args
    ]


def entry_counts(
    obj: KernelObject, symbol: str, args: Sequence[Argument], home: Path | None = None
) -> dict[str, int]:
    """The operations one call of `symbol` on `args` issues (counts.hpp classes), from
    the cache or counted now (the host library built if needed: g++ 12 or newer)."""
    home = Path(home) if home is not None else paths.home()
    key = sha256_text(canonical_json({
        "library": host_kernels.library_key(obj, host_kernels.compiler()),
        "symbol": symbol, "args": _digest(args),
    }))  # fmt: skip
    return dict(_cached(home, key, obj, symbol, tuple(_frozen(a) for a in args)))


def _frozen(arg: Argument) -> Argument | tuple:
    return (arg.dtype.str, arg.shape, arg.tobytes()) if isinstance(arg, np.ndarray) else arg


def _thawed(arg: Argument | tuple) -> Argument:
    if isinstance(arg, tuple):
        dtype, shape, data = arg
        return np.frombuffer(data, np.dtype(dtype)).reshape(shape).copy()
    return arg


@functools.cache
def _cached(home: Path, key: str, obj: KernelObject, symbol: str, frozen: tuple) -> tuple:
    path = home / COUNTS_DIR / f"{key}.json"
    if path.is_file():
        return tuple(json.loads(path.read_text())["counts"].items())
    kernel = host_kernels.host_kernel(obj, home)
    counts = kernel.counts(symbol, *(_thawed(a) for a in frozen))
    record = {"object": obj.name, "source": obj.source.name, "defines": obj.flags(),
              "symbol": symbol, "counts": counts}  # fmt: skip
    write_json_atomic(path, record)
    return tuple(counts.items())


def entry_cycles(
    obj: KernelObject, symbol: str, args: Sequence[Argument], home: Path | None = None
) -> core_model.CallCycles:
    """The slot model's cycles of one call (core_model.call_cycles of its counts)."""
    return core_model.call_cycles(entry_counts(obj, symbol, args, home))
