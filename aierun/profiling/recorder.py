"""Always-on, cheap recording of where wall time goes.

The production pipeline records into one Profiler for every run; `profile` only
prints what was recorded (there is no profile-only code path). Each record is a
small tuple appended to a list: a kernel call (with its write / run / read split),
a CPU op, or a span (phase, decode token, layer loop, layer) that nests the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

clock = time.perf_counter


@dataclass(slots=True)
class KernelCall:
    phase: str
    elf: str  # the ELF instance, e.g. "o_ffn.s64"
    layer: int | None
    start: float
    write_s: float
    run_s: float
    read_s: float
    bytes_written: int

    @property
    def total_s(self) -> float:
        return self.write_s + self.run_s + self.read_s


@dataclass(slots=True)
class CpuOp:
    phase: str
    name: str
    layer: int | None
    start: float
    dur_s: float


@dataclass(slots=True)
class Span:
    phase: str
    name: str  # "prefill", "decode", "token", "layers", "layer", "prepare"
    index: int | None
    start: float
    dur_s: float = 0.0


@dataclass
class Profiler:
    device: str = ""
    kernels: list[KernelCall] = field(default_factory=list)
    cpu_ops: list[CpuOp] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    phase: str = "prepare"

    @contextmanager
    def span(self, name: str, index: int | None = None) -> Iterator[Span]:
        record = Span(self.phase, name, index, clock())
        self.spans.append(record)
        try:
            yield record
        finally:
            record.dur_s = clock() - record.start

    @contextmanager
    def in_phase(self, phase: str) -> Iterator[Span]:
        """Enter a phase (prepare / prefill / decode) and time its whole wall."""
        previous, self.phase = self.phase, phase
        try:
            with self.span(phase) as record:
                yield record
        finally:
            self.phase = previous

    @contextmanager
    def cpu(self, name: str, layer: int | None = None) -> Iterator[None]:
        start = clock()
        try:
            yield
        finally:
            self.cpu_ops.append(CpuOp(self.phase, name, layer, start, clock() - start))

    def kernel(self, call: KernelCall) -> None:
        self.kernels.append(call)

    def clear(self) -> None:
        """Forget every record (a long-running server keeps none of them)."""
        self.kernels.clear()
        self.cpu_ops.clear()
        self.spans.clear()
