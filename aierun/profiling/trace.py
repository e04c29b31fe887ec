"""The profiled run as a Chrome / Perfetto trace (trace-event JSON): open it at
https://ui.perfetto.dev (or chrome://tracing)."""

from __future__ import annotations

import itertools
from typing import Any

from aierun.profiling.recorder import Profiler
from aierun.profiling.report import SEGMENTS


def trace_events(profiler: Profiler) -> dict[str, Any]:
    """Trace-event JSON: every span, kernel call (with its write / run / read
    slices nested inside) and CPU op as a complete ("X") event on one host thread,
    so Perfetto nests layers in phases and calls in layers by time. Times are whole
    nanoseconds written as microseconds with three decimals, which Perfetto reads
    back exactly: a child never sticks out of its parent by a rounding error."""
    starts = [r.start for r in (*profiler.spans, *profiler.kernels, *profiler.cpu_ops)]
    origin = min(starts, default=0.0)

    def ns(t: float) -> int:
        return round((t - origin) * 1e9)

    def event(name: str, cat: str, begin: int, end: int, **args: Any) -> dict[str, Any]:
        return {"name": name, "cat": cat, "ph": "X", "pid": 1, "tid": 1,
                "ts": begin / 1000, "dur": (end - begin) / 1000, "args": args}  # fmt: skip

    process = {"name": f"aierun ({profiler.device})"}
    events = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": process},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "host"}},
    ]
    for s in profiler.spans:
        label = s.name if s.index is None else f"{s.name} {s.index}"
        events.append(event(label, "span", ns(s.start), ns(s.start + s.dur_s),
                            phase=s.phase, index=s.index))  # fmt: skip
    for k in profiler.kernels:
        begin, end = ns(k.start), ns(k.start + k.total_s)
        events.append(event(k.elf, "kernel", begin, end, phase=k.phase, layer=k.layer,
                            write_ms=k.write_s * 1e3, run_ms=k.run_s * 1e3,
                            read_ms=k.read_s * 1e3, bytes_written=k.bytes_written))  # fmt: skip
        cuts = [begin, ns(k.start + k.write_s), ns(k.start + k.write_s + k.run_s), end]
        cuts = [min(max(cut, begin), end) for cut in cuts]
        for segment, (a, b) in zip(SEGMENTS, itertools.pairwise(cuts), strict=True):
            events.append(event(segment[:-2], "kernel.segment", a, b, elf=k.elf))
    for c in profiler.cpu_ops:
        events.append(event(c.name, "cpu", ns(c.start), ns(c.start + c.dur_s),
                            phase=c.phase, layer=c.layer))  # fmt: skip
    return {"traceEvents": events, "displayTimeUnit": "ms"}
