"""How much work an ELF must do, and the fastest a device could possibly do it.

The work of one call is what the build counted into the plan, per launch (each op's
module in aiebuild/ops): its FLOPs (a GEMM/GEMV is 2*M*N*K, causal attention its
visible query-key pairs, an elementwise launch a few per output element) and its DDR
bytes (every launch reads its operands from DDR and writes its results back, so the
sum of their sizes: a multi-launch ELF saves host round trips, not DDR traffic). This
module has no per-op code.

The time floor is max(FLOPs / peak FLOP rate, bytes / peak memory rate): no
schedule can beat it, so `measured / floor` says how far a kernel is from its
limit. npu2 uses the upstream-measured rates of docs/hardware.md, "Stack F. Performance
facts"; emu uses this machine's numpy rates, measured once and cached under the runtime
home.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import structlog

from aierun import paths
from aierun.abi import ElfSpec, Launch
from aierun.files import write_json_atomic

log = structlog.get_logger("aierun.profiling.roofline")

RATES_SCHEMA = 1


@dataclass(frozen=True)
class Cost:
    flops: int
    bytes: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


@dataclass(frozen=True)
class Rates:
    """Peak rates of a device: FLOP/s and memory bytes/s (reads plus writes)."""

    device: str
    flops_per_s: float
    bytes_per_s: float
    source: str

    def floor_s(self, cost: Cost) -> float:
        return max(self.compute_s(cost), self.memory_s(cost))

    def compute_s(self, cost: Cost) -> float:
        return cost.flops / self.flops_per_s

    def memory_s(self, cost: Cost) -> float:
        return cost.bytes / self.bytes_per_s

    def bound(self, cost: Cost) -> str:
        return "compute" if self.compute_s(cost) >= self.memory_s(cost) else "memory"


# docs/hardware.md, "Stack F. Performance facts": ~60 GB/s DDR for streaming (the best
# measured memory rate; bf16 GEMV reaches 28-41 GB/s of it) and 5-10 TFLOP/s for
# bf16 GEMM, of which we take the upper end: a floor must use the best rate seen.
# The marketed 50 TOPS are int8 and do not apply to our bf16 kernels.
NPU2_RATES = Rates(
    "npu2", 10e12, 60e9, "docs/hardware.md Stack F: 10 TFLOP/s bf16 GEMM, 60 GB/s DDR streaming"
)


def launch_cost(launch: Launch) -> Cost:
    return Cost(launch.flops, launch.ddr_bytes)


def elf_cost(spec: ElfSpec) -> Cost:
    """The work of one call of the ELF: all its launches, back to back."""
    total = Cost(0, 0)
    for launch in spec.launches:
        total += launch_cost(launch)
    return total


# -- rates ---------------------------------------------------------------------
def device_rates(device: str, cache_file: Path) -> Rates:
    """The peak rates of `device`: npu2's published ones, or for the emulator this
    machine's numpy rates (measured on first use, then read from `cache_file`).

    Other processes on the same cores can only make a measurement slower, never
    faster, so the cache keeps the best rates ever measured, and a cached value taken
    while the machine was busier than now is measured again (see `remeasure`)."""
    if device != "emu":
        return NPU2_RATES
    cached = _read_cached(cache_file, _machine())
    if cached is not None and cached[1] <= _load_per_cpu() + LOAD_SLACK:
        return cached[0]
    return remeasure(cache_file)


def remeasure(cache_file: Path) -> Rates:
    """Measure the host rates again and keep, per rate, the best of this and every
    earlier measurement: for rates that a busy machine made look too low (a kernel
    that beats its floor is the sign)."""
    machine = _machine()
    load = _load_per_cpu()
    cached = _read_cached(cache_file, machine)
    rates = measure_host_rates()
    if cached is not None:
        best = cached[0]
        rates = replace(
            rates,
            flops_per_s=max(rates.flops_per_s, best.flops_per_s),
            bytes_per_s=max(rates.bytes_per_s, best.bytes_per_s),
        )
        load = min(load, cached[1])
    payload = {"schema": RATES_SCHEMA, "machine": machine, "rates": asdict(rates), "load": load}
    try:
        write_json_atomic(cache_file, payload)
    except OSError as exc:  # a read-only home: the rates still serve this report
        log.warning("roofline.cache_not_written", cache=str(cache_file), reason=str(exc))
    log.info("roofline.measured", gflops=round(rates.flops_per_s / 1e9, 1),
             gbps=round(rates.bytes_per_s / 1e9, 1), cache=str(cache_file))  # fmt: skip
    return rates


# A cached measurement is kept unless the machine was busier then by this much
# (load average per CPU): measuring again costs about a second.
LOAD_SLACK = 0.25


def _load_per_cpu() -> float:
    if not hasattr(os, "getloadavg"):
        return 0.0
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def _machine() -> dict[str, str | int | None]:
    """What the cached rates depend on: a different machine or numpy measures again."""
    return {
        "node": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }


def _read_cached(cache_file: Path, machine: dict) -> tuple[Rates, float] | None:
    """(rates, load per CPU while they were measured) from the cache."""
    try:
        data = json.loads(cache_file.read_text())
        if data["schema"] == RATES_SCHEMA and data["machine"] == machine:
            return Rates(**data["rates"]), float(data.get("load", 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, torn or from another version: measure again
    return None


def measure_host_rates(repeats: int = 3) -> Rates:
    """Best-of-`repeats` numpy fp32 matmul FLOP/s and memcpy bytes/s (read + write),
    the two things the emulator spends its time on. Other processes busy on the
    same cores lower both: the report says so when a kernel beats its floor."""
    n = 2048  # big enough for numpy's BLAS to reach its full rate
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), np.float32)
    b = rng.standard_normal((n, n), np.float32)
    matmul_s = _best_of(repeats, lambda: a @ b)
    src = np.ones(16 * 2**20, np.float32)  # 64 MB: far beyond the caches
    dst = np.empty_like(src)
    copy_s = _best_of(repeats, lambda: np.copyto(dst, src))
    return Rates(
        "emu",
        2 * n**3 / matmul_s,
        2 * src.nbytes / copy_s,
        f"this machine, measured: numpy fp32 {n}^3 matmul, 64 MB np.copyto (read + write)",
    )


def _best_of(repeats: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def rates_cache() -> Path:
    """Where the emulator's measured peak rates are kept (one file per runtime home)."""
    return paths.home() / "roofline" / "rates.json"
