"""The real NPU2 device (Strix / Krackan) through XRT's Python bindings, full-ELF flow.

One artifact is one full ELF whose wrapper device `@main` runs every launch of the
ELF from one host call (aiebuild.npu2.stitching). Its kernel name and argument order
are the ABI's (`ElfSpec.kernel_name`, `ElfSpec.kernel_arg_order` in aierun/abi.py),
which the build follows when it stitches the ELF and records the artifact's `kernel`
and `arg_order`.

XRT objects and their lifetimes:

- the device (`pyxrt.device(0)`) is opened once, guarded by a file lock so that
  two processes never share the NPU's scarce hardware contexts;
- `load()` only parses the ELF (`pyxrt.elf`); the hardware context and the
  kernel are created on first use and kept in an LRU capped at the context
  limit (16 on Strix/Linux, where a context past the limit has returned garbage
  instead of an error): the least recently used ELF loses its context and kernel
  (never its buffers) and gets them back on its next run;
- one `pyxrt.run` per (ELF, bound buffers) is kept, so a repeated call only
  starts and waits;
- buffers are `pyxrt.ext.bo` objects mapped into host memory once; bf16 is a
  byte-level ml_dtypes view of that mapping, never a conversion.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import structlog

from aierun.abi import HOST_WRITTEN, ArgSpec, ElfSpec
from aierun.devices.base import Buffer, Device
from aierun.errors import DeviceError, UserError

log = structlog.get_logger("aierun.npu")

# XRT 2.23 is the first release whose pyxrt builds a hw_context from an xrt.elf
# (XRT pull request 9560); pyxrt.ext.bo / ext.kernel arrived in 2.21.
MIN_XRT = (2, 23)
# Hardware contexts one process can hold: 16 on Strix/Linux (27 reported on
# Krackan/Windows). AIERUN_NPU_CONTEXTS overrides it.
DEFAULT_CONTEXT_LIMIT = 16
CONTEXT_LIMIT_ENV = "AIERUN_NPU_CONTEXTS"
# Long enough to ride out a process that is just closing the device, short enough
# that a busy NPU is reported at once instead of hanging the command.
LOCK_TIMEOUT_S = 0.5
# Reusable runs kept per ELF: a model binds each ELF to one buffer set per layer
# and output slot, so this bounds memory without evicting in steady state.
RUNS_PER_ELF = 256
INSTALL_HINT = (
    "Install XRT >= {min} with the amdxdna NPU driver and make pyxrt importable "
    "(`source /opt/xilinx/xrt/setup.sh`), see docs/hardware-bring-up.md, or run on the "
    "numpy emulation with --device emu."
)


def _install_hint() -> str:
    return INSTALL_HINT.format(min=".".join(map(str, MIN_XRT)))


class NpuBuffer(Buffer):
    """An ELF argument in a `pyxrt.ext.bo`, seen by the host through its mapping."""

    def __init__(self, spec: ArgSpec, label: str, bo: Any, directions: tuple[Any, Any]):
        super().__init__(spec, label)
        self.bo: Any = bo
        self._to_device, self._from_device = directions
        mapped = np.frombuffer(bo.map(), dtype=np.uint8)
        self._host: np.ndarray | None = mapped.view(spec.np_dtype).reshape(spec.shape)

    @property
    def host(self) -> np.ndarray:
        if self._host is None:
            raise self._released()
        return self._host

    def sync_to_device(self) -> None:
        self._live_bo().sync(self._to_device)

    def sync_from_device(self) -> None:
        self._live_bo().sync(self._from_device)

    def sync_range_from_device(self, offset: int, nbytes: int) -> None:
        self._live_bo().sync(self._from_device, nbytes, offset)

    def sync_range_to_device(self, offset: int, nbytes: int) -> None:
        self._live_bo().sync(self._to_device, nbytes, offset)

    def release(self) -> None:
        """Drop the mapping and the BO; the host view must not be used after this."""
        self._host = None
        self.bo = None

    def _live_bo(self) -> Any:
        if self.bo is None:
            raise self._released()
        return self.bo

    def _released(self) -> DeviceError:
        return DeviceError(f"buffer {self.label} was released with the NPU device")


@dataclass(eq=False)
class LoadedElf:
    """A loaded ELF: the parsed image always, context + kernel + runs while live."""

    instance: str
    path: Path
    kernel_name: str
    order: tuple[str, ...]  # argument names in XRT index order
    image: Any
    context: Any = None
    kernel: Any = None
    runs: OrderedDict[tuple[Buffer, ...], Any] = field(default_factory=OrderedDict)
    staged: tuple[tuple[Buffer, ...], Any] | None = None  # (bound buffers, run) for `run`

    def drop_context(self) -> None:
        """Runs reference the kernel, the kernel references the context."""
        self.staged = None
        self.runs.clear()
        self.kernel = None
        self.context = None


class NpuDevice(Device):
    name = "npu"
    targets = ("npu2",)

    def __init__(self, context_limit: int | None = None, lock_path: Path | None = None):
        if context_limit is not None and context_limit < 1:
            raise ValueError(f"context_limit must be positive, got {context_limit}")
        self.context_limit = context_limit or _context_limit_from_env()
        self._xrt = _import_pyxrt()
        self._lock = _acquire_lock(lock_path or default_lock_path())
        try:
            self._device: Any = _open_device(self._xrt)
            self.xrt_version = _check_xrt_version(self._xrt, self._device)
        except BaseException:
            self._lock.release()
            raise
        sync = self._xrt.xclBOSyncDirection
        self._directions = (sync.XCL_BO_SYNC_BO_TO_DEVICE, sync.XCL_BO_SYNC_BO_FROM_DEVICE)
        self._buffers: list[NpuBuffer] = []
        self._loaded: list[LoadedElf] = []
        self._live: OrderedDict[LoadedElf, None] = OrderedDict()  # least recently used first
        log.info("npu.open", xrt=self.xrt_version, context_limit=self.context_limit)

    # -- the Device interface --------------------------------------------------
    def alloc(
        self, spec: ArgSpec, label: str, bfp16_operand: bool = False, plain_read: bool = True
    ) -> NpuBuffer:
        # The NPU's kernels convert their bfp16 operands themselves: no second form.
        bo = self._xrt.ext.bo(self._open(), spec.nbytes)
        buffer = NpuBuffer(spec, label, bo, self._directions)
        self._buffers.append(buffer)
        return buffer

    def load(self, spec: ElfSpec, files: dict[str, Any]) -> LoadedElf:
        path = _elf_file(spec, files)
        self._open()
        loaded = LoadedElf(
            spec.instance,
            path,
            spec.kernel_name,
            tuple(arg.name for arg in spec.kernel_arg_order),
            self._xrt.elf(str(path)),
        )
        self._loaded.append(loaded)
        log.debug("npu.elf.load", elf=spec.instance, file=path.name, kernel=loaded.kernel_name)
        return loaded

    def stage(self, elf: LoadedElf, spec: ElfSpec, buffers: dict[str, Buffer]) -> None:
        """Context, kernel and a run with its arguments set: created on the first call
        of each (ELF, buffer set) and reused, outside the timed device run."""
        _check_host_written(spec, buffers)
        bound = tuple(buffers[name] for name in elf.order)
        elf.staged = (bound, self._run_for(elf, bound))

    def run(self, elf: LoadedElf, spec: ElfSpec, buffers: dict[str, Buffer]) -> None:
        bound = tuple(buffers[name] for name in elf.order)
        if elf.staged is None or elf.staged[0] != bound:  # not staged: do it now
            self.stage(elf, spec, buffers)
        run = elf.staged[1]
        elf.staged = None
        try:
            run.start()
            run.wait2()
        except Exception as exc:  # pyxrt raises RuntimeError subclasses, not one type
            raise DeviceError(
                f"{spec.instance}: the NPU run of {elf.path.name} (kernel {elf.kernel_name}) "
                f"failed: {exc}. ERT_CMD_STATE_TIMEOUT means the design hung on the device; "
                "see docs/hardware-bring-up.md."
            ) from exc
        for arg in spec.args:
            if arg.role not in HOST_WRITTEN:
                buffers[arg.name].written = True

    def close(self) -> None:
        """Release in the order XRT needs: runs (they hold buffers and kernels),
        buffers, kernels, contexts, ELF images, then the device and the lock."""
        if self._device is None:
            return
        for loaded in self._loaded:
            loaded.staged = None
            loaded.runs.clear()
        for buffer in self._buffers:
            buffer.release()
        self._buffers.clear()
        for loaded in self._loaded:
            loaded.kernel = None
        for loaded in self._loaded:
            loaded.context = None
        self._live.clear()
        for loaded in self._loaded:
            loaded.image = None
        self._loaded.clear()
        self._device = None
        self._lock.release()
        log.info("npu.close")

    # -- hardware contexts -------------------------------------------------------
    def live_contexts(self) -> list[str]:
        """ELF instances holding a hardware context, least recently used first."""
        return [loaded.instance for loaded in self._live]

    def _run_for(self, elf: LoadedElf, bound: tuple[Buffer, ...]) -> Any:
        self._activate(elf)
        run = elf.runs.get(bound)
        if run is not None:
            elf.runs.move_to_end(bound)
            return run
        run = self._xrt.run(elf.kernel)
        for index, buffer in enumerate(bound):
            run.set_arg(index, buffer.bo)  # type: ignore[attr-defined]
        elf.runs[bound] = run
        if len(elf.runs) > RUNS_PER_ELF:
            elf.runs.popitem(last=False)
        return run

    def _activate(self, elf: LoadedElf) -> None:
        """Give `elf` a context and kernel, evicting the least recently used ELF's
        first when the pool is full; never hold more than the limit."""
        device = self._open()
        if elf.image is None:
            raise DeviceError(f"{elf.instance} was released with the NPU device")
        if elf.context is not None:
            self._live.move_to_end(elf)
            return
        while len(self._live) >= self.context_limit:
            victim, _ = self._live.popitem(last=False)
            victim.drop_context()
            log.info("npu.context.evict", elf=victim.instance, for_elf=elf.instance)
        try:
            elf.context = self._xrt.hw_context(device, elf.image)
            elf.kernel = self._xrt.ext.kernel(elf.context, elf.kernel_name)
        except Exception as exc:
            elf.drop_context()
            raise DeviceError(
                f"{elf.instance}: could not create a hardware context and kernel "
                f"{elf.kernel_name} from {elf.path.name}: {exc}. This process holds "
                f"{len(self._live)} of its {self.context_limit} contexts; another process "
                f"using the NPU holds more (lower {CONTEXT_LIMIT_ENV} if the driver's pool "
                "is smaller), or the ELF was built with another sequence name."
            ) from exc
        self._live[elf] = None
        log.debug("npu.context.create", elf=elf.instance, live=len(self._live))

    def _open(self) -> Any:
        if self._device is None:
            raise DeviceError("the NPU device was closed")
        return self._device


# -- opening the device ----------------------------------------------------------


def _context_limit_from_env() -> int:
    text = os.environ.get(CONTEXT_LIMIT_ENV, "")
    if not text:
        return DEFAULT_CONTEXT_LIMIT
    if not text.isdigit() or int(text) < 1:
        raise UserError(
            f"{CONTEXT_LIMIT_ENV}={text!r}: expected the number of hardware contexts one "
            f"process may hold (a positive integer; {DEFAULT_CONTEXT_LIMIT} on Strix/Linux)."
        )
    return int(text)


def _import_pyxrt() -> Any:
    try:
        xrt = importlib.import_module("pyxrt")
    except ImportError as exc:
        accel = sorted(str(p) for p in Path("/dev/accel").glob("accel*"))
        raise UserError(
            f"no NPU found here: looked for XRT's Python bindings (pyxrt), which are not "
            f"importable ({exc}), and for NPU device nodes (/dev/accel/accel*: "
            f"{', '.join(accel) or 'none'}). {_install_hint()}"
        ) from None
    if not (hasattr(xrt, "elf") and hasattr(xrt, "ext")):
        raise UserError(
            "this pyxrt has no full-ELF support (pyxrt.elf / pyxrt.ext are missing): it is "
            f"older than XRT {'.'.join(map(str, MIN_XRT))}. {_install_hint()}"
        )
    return xrt


def default_lock_path() -> Path:
    """One lock per machine, not per runtime home: doit (build/) and a bundle run
    (~/.cache/aierun) share the same NPU."""
    return Path(tempfile.gettempdir()) / "aierun-npu0.lock"


def _acquire_lock(path: Path) -> filelock.BaseFileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except filelock.Timeout:
        raise UserError(
            f"another process holds the NPU (lock file {path}). One process at a time may "
            "use it, since hardware contexts are a small per-device pool: wait for that "
            "process to finish or stop it, or run this one with --device emu."
        ) from None
    return lock


def _open_device(xrt: Any) -> Any:
    try:
        return xrt.device(0)
    except Exception as exc:  # XRT reports a missing device as a plain RuntimeError
        raise UserError(
            f"no NPU found: XRT could not open device 0 ({exc}). Check that the amdxdna "
            "driver is loaded (`ls /dev/accel`, `xrt-smi examine`) and that the NPU is "
            "enabled in the firmware setup, or run with --device emu."
        ) from None


def _check_xrt_version(xrt: Any, device: Any) -> str:
    """The XRT version the device reports; refuses one older than MIN_XRT."""
    try:
        info = json.loads(device.get_info(xrt.xrt_info_device.host))
        text = str(info["version"])
    except Exception as exc:  # an unexpected report must not block a working install
        log.warning("npu.xrt_version.unknown", reason=str(exc))
        return "unknown"
    version = parse_xrt_version(text)
    if version is not None and version < MIN_XRT:
        raise UserError(f"XRT {text} is too old for the full-ELF flow. {_install_hint()}")
    return text


def parse_xrt_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of "2.23.0", "2.23.244" or a release tag "202610.2.23.244"."""
    numbers = [int(n) for n in re.findall(r"\d+", text.split("_")[0])]
    if len(numbers) < 2:
        return None
    major, minor = numbers[-3:-1] if len(numbers) >= 3 else numbers
    return major, minor


# -- per artifact / per call --------------------------------------------------------


def _elf_file(spec: ElfSpec, files: dict[str, Any]) -> Path:
    elfs = sorted(name for name in files if name.endswith(".elf"))
    if len(elfs) != 1:
        raise UserError(
            f"the artifact of {spec.instance} holds {len(elfs)} .elf files ({elfs}): an npu2 "
            "artifact has exactly one. Rebuild it with `doit compile target=npu2`."
        )
    return Path(files[elfs[0]])


def _check_host_written(spec: ElfSpec, buffers: dict[str, Buffer]) -> None:
    """On the NPU an unwritten input computes on stale memory without any error."""
    for arg in spec.args:
        if arg.role in HOST_WRITTEN and not buffers[arg.name].written:
            raise DeviceError(
                f"{spec.instance} reads {arg.name!r} ({arg.role}, buffer "
                f"{buffers[arg.name].label}) which nothing has written"
            )
