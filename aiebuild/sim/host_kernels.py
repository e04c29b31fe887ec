"""The AIE kernels compiled for this machine, for the dataflow simulator.

Each kernel object (a kernels_src/*.cc source and its -D parameters, exactly as
Peano compiles it for npu2) becomes one shared library, built by the system C++
compiler against the host model of aie_api in kernels_src/host/ and loaded with
ctypes. Libraries are cached by content in the artifact store under the target
name "host" (`<home>/cache/host/<key>/`): the key covers the source, every header
the build can include, the flags and the compiler's version, and entries are
published atomically under the store's lock.

    kernel = host_kernel(kernel_object("eltwise.cc", {"CHUNK": 64, ...}))
    kernel.call("add_bf16_bf16_bf16_64", a, b, c)   # or kernel.add_bf16_bf16_bf16_64(a, b, c)

Arrays go in as pointers to their data (C-contiguous, any dtype: bf16 arrays as
ml_dtypes.bfloat16, state buffers as the design declares them); Python ints as C
ints. Every library has its own rounding mode register (the core's), at the AIE2P
default (floor) when loaded; `reset_tile` and `rounding` let the simulator give
each core its own when cores share one library. `counts` runs an entry point and
returns what it issued, counted as aie_api expands each call on AIE2P
(kernels_src/host/aie_api/detail/counts.hpp).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from aiebuild.ops.common import KERNELS_SRC, KernelObject
from aiebuild.store import Store
from aierun import paths
from aierun.abi import canonical_json
from aierun.errors import UserError
from aierun.files import sha256_file, sha256_text

HOST_API = KERNELS_SRC / "host"
# Defines the per-library state (the rounding mode register) and its C accessors.
HOST_RUNTIME = HOST_API / "host_runtime.cc"
STORE_TARGET = "host"
# -ffp-contract=off: the kernels' products and sums round separately, as in the model
# and in numpy; a fused multiply-add would change last bits.
FLAGS = ("-O2", "-std=c++20", "-shared", "-fPIC", "-ffp-contract=off")
log = structlog.get_logger("aiebuild.sim.host_kernels")


class HostCompileError(UserError):
    """A kernel does not compile against the host aie_api (or the compiler failed)."""


def compiler() -> str:
    """The C++ compiler: $CXX, else g++, as an absolute path."""
    name = os.environ.get("CXX") or "g++"
    found = shutil.which(name)
    if found is None:
        raise UserError(
            f"simulating the kernels, and the npu2 time model (doit compile / check /"
            f" calibrate count what each kernel call issues on its host build), need a "
            f"C++20 compiler (g++ 12 or newer) and "
            f"'{name}' is not on PATH: install one (`apt install g++`) or set CXX."
        )
    return found


@functools.cache
def compiler_version(path: str) -> str:
    result = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else f"{path} (no --version)"


def library_name(obj: KernelObject) -> str:
    return Path(obj.name).with_suffix(".so").name


def headers(obj: KernelObject) -> list[Path]:
    """Every header the build can include from our tree: the kernels' own (beside the
    source and in kernels_src/) and the whole host model."""
    found = {*obj.source.parent.glob("*.h"), *KERNELS_SRC.glob("*.h")}
    found |= {p for p in HOST_API.rglob("*") if p.is_file()}
    return sorted(found)


def _label(path: Path) -> str:
    """A header's name in the key, independent of where the checkout lives."""
    inside = path.is_relative_to(KERNELS_SRC)
    return path.relative_to(KERNELS_SRC).as_posix() if inside else path.name


def command(obj: KernelObject, cxx: str, output: Path) -> list[str]:
    return [
        cxx, *FLAGS, f"-I{HOST_API}", f"-I{KERNELS_SRC}", *obj.flags(),
        str(obj.source), str(HOST_RUNTIME), "-o", str(output),
    ]  # fmt: skip


def library_key(obj: KernelObject, cxx: str) -> str:
    payload = {
        "source": sha256_file(obj.source),
        "headers": {_label(h): sha256_file(h) for h in headers(obj)},
        "flags": [*FLAGS, *obj.flags()],
        "compiler": compiler_version(cxx),
    }
    return sha256_text(canonical_json(payload))


def build_library(obj: KernelObject, home: Path | None = None) -> Path:
    """The shared library of `obj`, from the store or compiled now."""
    cxx = compiler()
    store = Store(Path(home) if home is not None else paths.home(), STORE_TARGET)
    key = library_key(obj, cxx)
    name = library_name(obj)
    if store.is_valid(key):
        return store.entry(key) / name
    with tempfile.TemporaryDirectory(prefix="aie-host-kernel-") as work:
        output = Path(work) / name
        argv = command(obj, cxx, output)
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HostCompileError(_compile_failure(obj, result.stderr))
        seconds = round(time.perf_counter() - started, 2)
        log.info("host_kernel.compiled", object=obj.name, key=key[:12], seconds=seconds)
        meta = {"instance": name, "source": obj.source.name, "defines": obj.flags()}
        entry = store.publish(key, {**meta, "command": argv}, {name: output})
    return entry / name


def _compile_failure(obj: KernelObject, stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if "error" in line] or stderr.splitlines()
    shown = "\n".join(errors[:12])
    return (
        f"{obj.source} {' '.join(obj.flags())} does not compile against the host aie_api "
        f"(kernels_src/host): fix the kernel, or extend the host model if the kernel uses "
        f"aie_api that AIE2P has and the model lacks. The compiler said:\n{shown}"
    )


class HostKernel:
    """A loaded kernel library: call its extern "C" entry points with numpy arrays and
    ints."""

    def __init__(self, obj: KernelObject, path: Path):
        self.obj = obj
        self.path = path
        self._library = ctypes.CDLL(str(path))
        self._library.aie_host_get_rounding.restype = ctypes.c_uint
        self._library.aie_host_count_name.restype = ctypes.c_char_p
        slots = self._library.aie_host_count_slots()
        self.count_names = tuple(
            self._library.aie_host_count_name(slot).decode() for slot in range(slots)
        )

    def call(self, symbol: str, *args: np.ndarray | int) -> None:
        """Run entry point `symbol` once. Arrays are passed by pointer and must be
        C-contiguous; the kernel reads and writes them in place."""
        self.entry(symbol)(*args)

    def entry(self, symbol: str) -> Callable[..., None]:
        try:
            function = getattr(self._library, symbol)
        except AttributeError:
            raise AttributeError(
                f"{self.obj.name} ({self.obj.source.name} {' '.join(self.obj.flags())}) has "
                f"no entry point {symbol!r}: its -D parameters decide the symbols' suffixes"
            ) from None
        function.restype = None

        def run(*args: np.ndarray | int) -> None:
            function(*(_argument(symbol, index, value) for index, value in enumerate(args)))

        return run

    def __getattr__(self, symbol: str) -> Callable[..., None]:
        if symbol.startswith("_"):
            raise AttributeError(symbol)
        return self.entry(symbol)

    def counts(self, symbol: str, *args: np.ndarray | int) -> dict[str, int]:
        """Run entry point `symbol` once and return the operations it issued, by slot
        class (counts.hpp). The counters are the library's: not for concurrent calls."""
        self._library.aie_host_counts_reset()
        self.call(symbol, *args)
        read = (ctypes.c_uint64 * len(self.count_names))()
        self._library.aie_host_counts_read(read)
        return dict(zip(self.count_names, (int(n) for n in read), strict=True))

    def reset_tile(self) -> None:
        """The core starts: its rounding mode register goes back to floor."""
        self._library.aie_host_reset_tile()

    @property
    def rounding(self) -> int:
        """The rounding mode register (an opaque value to save and restore)."""
        return self._library.aie_host_get_rounding()

    @rounding.setter
    def rounding(self, mode: int) -> None:
        self._library.aie_host_set_rounding(ctypes.c_uint(mode))


def _argument(symbol: str, index: int, value: np.ndarray | int) -> Any:
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError(f"{symbol} argument {index}: the array must be C-contiguous")
        if value.flags.writeable and value.nbytes:  # ~6x faster than .ctypes.data
            return ctypes.byref(ctypes.c_char.from_buffer(value.reshape(-1).view(np.uint8)))
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return ctypes.c_int(int(value))
    raise TypeError(f"{symbol} argument {index}: expected a numpy array or an int, got {value!r}")


@functools.cache
def _load(obj: KernelObject, path: Path) -> HostKernel:
    return HostKernel(obj, path)


def host_kernel(obj: KernelObject, home: Path | None = None) -> HostKernel:
    """`obj` compiled for this machine (or taken from the store) and loaded. Loading the
    same library twice in one process gives the same HostKernel."""
    return _load(obj, build_library(obj, home))


def load_kernels(
    objects: Iterable[KernelObject], home: Path | None = None
) -> dict[KernelObject, HostKernel]:
    """host_kernel of each object, the missing ones compiled in parallel (one compiler
    process per CPU)."""
    unique = list(dict.fromkeys(objects))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        loaded = pool.map(lambda obj: host_kernel(obj, home), unique)
        return dict(zip(unique, loaded, strict=True))
