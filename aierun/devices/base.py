"""What every device offers the buffer manager and the pipeline.

A device allocates buffers (host-mapped device memory), loads an ELF artifact and
runs it on a set of buffers bound by argument name. Buffers know their ABI spec,
whether the host or a kernel has filled them, and give zero-copy host views.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from aierun.abi import ArgSpec, ElfSpec


class Buffer(ABC):
    """One device buffer of an ELF argument's shape and dtype."""

    def __init__(self, spec: ArgSpec, label: str):
        self.spec = spec
        self.label = label  # e.g. "model.layers.3.self_attn.q_proj.weight" or "o_ffn.s64:y#0"
        self.written = False  # filled by the host or produced by a kernel
        self.last_source: Any = None  # the host array last written (skip rewriting it)

    @property
    @abstractmethod
    def host(self) -> np.ndarray:
        """The host-mapped view, typed and shaped as the spec says (zero-copy)."""

    @abstractmethod
    def sync_to_device(self) -> None: ...

    @abstractmethod
    def sync_from_device(self) -> None: ...

    def write(self, source: np.ndarray) -> int:
        """Copy host data in and push it to the device; returns bytes written."""
        nbytes = self.write_with(lambda host: np.copyto(host, source.reshape(host.shape), "no"))
        self.last_source = source
        return nbytes

    def write_with(self, fill: Callable[[np.ndarray], object]) -> int:
        """Let `fill` write the host view in place (no staging array), then push it
        to the device; returns bytes written."""
        fill(self.host)
        self.sync_to_device()
        self.written = True
        self.last_source = None
        return self.spec.nbytes

    def read(self) -> np.ndarray:
        self.sync_from_device()
        return self.host

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Sync back only rows [start, stop) of the leading axis and view them."""
        row_bytes = self.spec.nbytes // self.spec.shape[0]
        self.sync_range_from_device(start * row_bytes, (stop - start) * row_bytes)
        return self.host[start:stop]

    def sync_range_from_device(self, offset: int, nbytes: int) -> None:
        """Sync `nbytes` at byte `offset` back; devices that cannot do less sync all."""
        self.sync_from_device()

    def sync_range_to_device(self, offset: int, nbytes: int) -> None:
        """Push `nbytes` at byte `offset` (written in place through `host`) to the
        device; devices that cannot do less push all."""
        self.sync_to_device()


class Device(ABC):
    name: str
    # Artifact targets whose ELFs this device can execute.
    targets: tuple[str, ...]

    def check_capacity(self, weight_elements: int) -> None:  # noqa: B027 (no limit by default)
        """Refuse, before any weight is loaded, a model this device cannot hold."""

    @abstractmethod
    def alloc(
        self, spec: ArgSpec, label: str, bfp16_operand: bool = False, plain_read: bool = True
    ) -> Buffer:
        """A buffer for one argument. `bfp16_operand`: some launch reads this static
        data as a bfp16 mmul operand (a device may keep it in that form as well);
        `plain_read`: some launch reads it as it is (else only in the bfp16 form)."""

    @abstractmethod
    def load(self, spec: ElfSpec, files: dict[str, Any]) -> Any:
        """Make an ELF artifact ready to run; returns the device's handle for it."""

    def stage(self, elf: Any, spec: ElfSpec, buffers: dict[str, Buffer]) -> None:  # noqa: B027
        """Get a call ready to start (bind the arguments, acquire a context), so that
        `run` times only the device's execution. Optional: `run` stages if needed."""

    @abstractmethod
    def run(self, elf: Any, spec: ElfSpec, buffers: dict[str, Buffer]) -> None:
        """Run all launches of a loaded ELF on buffers bound by argument name."""

    def close(self) -> None:  # noqa: B027  (a device without resources needs no teardown)
        """Release device resources (buffers, contexts) in the order the driver needs."""
