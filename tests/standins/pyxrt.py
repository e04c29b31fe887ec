"""A stand-in for XRT's `pyxrt` module (tests only, never shipped).

It has the names the full-ELF flow uses (device, elf, hw_context, ext.kernel,
ext.bo, run, xclBOSyncDirection, xrt_info_device) and:

- records every call in `calls` as tuples, releases included (("release", kind,
  serial) when an object's last reference goes, as the C++ destructor would run);
- emulates a BO as two bytearrays, the host mapping and the device memory, which
  only `sync` copies between, so a missing or reversed sync shows;
- holds references the way XRT's C++ objects do (a run holds its kernel and
  bound BOs, a kernel its context, a context its device and ELF);
- refuses a hardware context past `CONTEXT_POOL` (the real driver may return
  garbage instead), and tracks the peak number of live contexts;
- runs `KERNELS[name](args)` on wait2 to emulate a kernel writing device memory,
  and fails the runs of kernels in `FAILING` as a hung design does.

Class names are spelled as in pyxrt. Load a fresh copy of this file per test so
that its records start empty.
"""

from __future__ import annotations

import enum
import itertools
import json
import types
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

calls: list[tuple] = []
XRT_VERSION = "2.25.0"
DEVICES = 1
CONTEXT_POOL = 32
KERNELS: dict[str, Callable[[dict[int, object]], None]] = {}
FAILING: set[str] = set()
live: Counter[str] = Counter()
created: Counter[str] = Counter()
peak: Counter[str] = Counter()
_SERIALS: defaultdict[str, itertools.count] = defaultdict(itertools.count)


class xclBOSyncDirection(enum.Enum):
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


class xrt_info_device(enum.Enum):
    host = 15


class _Tracked:
    kind = "object"
    serial: int | None = None  # stays None when the constructor refused

    def __init__(self) -> None:
        self.serial = next(_SERIALS[self.kind])
        live[self.kind] += 1
        created[self.kind] += 1
        peak[self.kind] = max(peak[self.kind], live[self.kind])

    def __del__(self) -> None:
        if self.serial is None:
            return
        live[self.kind] -= 1
        calls.append(("release", self.kind, self.serial))


class device(_Tracked):
    kind = "device"

    def __init__(self, index: int) -> None:
        if index >= DEVICES:
            raise RuntimeError(f"No such device with index '{index}'")
        super().__init__()
        calls.append(("device", index))

    def get_info(self, key: xrt_info_device) -> str:
        assert key is xrt_info_device.host
        return json.dumps({"version": XRT_VERSION, "branch": "stand-in"})


class elf(_Tracked):
    kind = "elf"

    def __init__(self, path: str) -> None:
        Path(path).read_bytes()  # the real constructor parses the file
        super().__init__()
        self.path = path
        calls.append(("elf", path))


class hw_context(_Tracked):
    kind = "hw_context"

    def __init__(self, dev: device, image: elf) -> None:
        if live[self.kind] >= CONTEXT_POOL:
            raise RuntimeError("DRM_IOCTL_AMDXDNA_CREATE_HWCTX: no free hardware context")
        super().__init__()
        self.device, self.elf = dev, image
        calls.append(("hw_context", image.path))


class _ExtKernel(_Tracked):
    kind = "kernel"

    def __init__(self, context: hw_context, name: str) -> None:
        super().__init__()
        self.context, self.name = context, name
        calls.append(("ext.kernel", name))


class _ExtBo(_Tracked):
    kind = "bo"

    def __init__(self, dev: device, nbytes: int) -> None:
        super().__init__()
        self.device = dev
        self.mapped = bytearray(nbytes)  # what the host sees through map()
        self.memory = bytearray(nbytes)  # what the NPU reads and writes
        calls.append(("ext.bo", self.serial, nbytes))

    def map(self) -> memoryview:
        return memoryview(self.mapped)

    def sync(self, direction: xclBOSyncDirection, size: int = 0, offset: int = 0) -> None:
        """Whole buffer, or `size` bytes from `offset` (pyxrt's partial sync)."""
        calls.append(("sync", self.serial, direction.name))
        span = slice(offset, offset + size) if size else slice(None)
        if direction is xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
            self.memory[span] = self.mapped[span]
        else:
            self.mapped[span] = self.memory[span]


ext = types.SimpleNamespace(kernel=_ExtKernel, bo=_ExtBo)


class run(_Tracked):
    kind = "run"

    def __init__(self, kernel: _ExtKernel) -> None:
        super().__init__()
        self.kernel = kernel
        self.args: dict[int, _ExtBo] = {}
        calls.append(("run", kernel.name))

    def set_arg(self, index: int, bo: _ExtBo) -> None:
        self.args[index] = bo
        calls.append(("set_arg", index, bo.serial))

    def start(self) -> None:
        calls.append(("start", self.kernel.name))

    def wait2(self) -> None:
        calls.append(("wait2", self.kernel.name))
        if self.kernel.name in FAILING:
            raise RuntimeError("Command failed to complete successfully (ERT_CMD_STATE_TIMEOUT)")
        if self.kernel.name in KERNELS:
            KERNELS[self.kernel.name](self.args)
