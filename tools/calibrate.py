"""The npu2 time model against published NPU2 measurements (docs/hardware.md section 8).

Each published point is modeled as the project would run that shape: our design
(aiebuild/ops) through a one-launch ELF spec, its kernel calls priced by what our own
kernels issue (counted on their host build, aiebuild/array/kernel_counts.py, on the
slot model of aiebuild/array/core_model.py). A point is "fit" when a rate of
aiebuild/array/timing.py was solved from it (timing.py says which), "held_out"
otherwise; where our kernel or design differs in structure from the measured upstream
one, the point's note says so, and the error then measures that difference too.

`doit calibrate` (`python -m tools.calibrate --llama`) prints the table (docs/benchmarks.md
keeps a copy) and the modeled Llama-3.2-1B ELFs at seq_len 2048 beside the seed's
measured times; `json=PATH` (`--json PATH`) writes the points.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from aiebuild import placed
from aiebuild.array import timing
from aiebuild.ops import eltwise, flash_attn, gemm, gemv
from aierun.abi import WALK, ArgSpec, ElfSpec, Launch, Role
from aierun.profiling.seed import seed_profile

AIR = "Xilinx/mlir-air programming_examples/kernel_registry/details/"


@dataclass(frozen=True)
class Point:
    """One published measurement and how to model it."""

    name: str
    measured_s: float
    source: str
    model: Callable[[], timing.ElfTime]
    fit: bool = False  # one of the points a timing.py rate was solved from
    note: str = ""  # how our kernel or design differs from the measured one

    @property
    def use(self) -> str:
        return "fit" if self.fit else "held_out"


# -- the same shapes through our designs ---------------------------------------------------
def _one_launch(name: str, args: list[ArgSpec], launch: Launch) -> Callable[[], timing.ElfTime]:
    spec = ElfSpec(name, "prefill", 0, tuple(args), (launch,))
    return lambda: placed.elf_time(spec)


def gemm_ours(m: int, k: int, n: int):
    args = [ArgSpec("x", (m, k), "bf16", Role.INPUT), ArgSpec("w", (n, k), "bf16", Role.WEIGHT),
            ArgSpec("y", (m, n), "bf16", Role.OUTPUT)]  # fmt: skip
    params = gemm.params(m, k, n, "bfp16")
    return _one_launch(f"gemm {m}x{k}x{n}", args, Launch("gemm", params, ("x", "w"), ("y",)))


def gemv_ours(m: int, k: int):
    args = [ArgSpec("x", (1, k), "bf16", Role.INPUT), ArgSpec("w", (m, k), "bf16", Role.WEIGHT),
            ArgSpec("y", (1, m), "bf16", Role.OUTPUT)]  # fmt: skip
    launch = Launch("gemv", gemv.params(1, k, m, channels=1), ("x", "w"), ("y",), "gemv")
    return _one_launch(f"gemv {m}x{k}", args, launch)


def add_ours(total: int, columns: int = 8):
    rows = total // 2048
    args = [ArgSpec(n, (rows, 2048), "bf16", r)
            for n, r in (("a", Role.INPUT), ("b", Role.INPUT), ("c", Role.OUTPUT))]  # fmt: skip
    params = {**eltwise.params(rows, 2048), "columns": columns}
    launch = Launch("add", params, ("a", "b"), ("c",), "add")
    return _one_launch(f"add {total} on {columns}", args, launch)


def attention_ours(seq: int, heads: int, kv_heads: int, dk: int = 64):
    q, kv = heads * dk, kv_heads * dk
    args = [ArgSpec("q", (seq, q), "bf16", Role.INPUT), ArgSpec("k", (seq, kv), "bf16", Role.INPUT),
            ArgSpec("v", (seq, kv), "bf16", Role.INPUT),
            ArgSpec("o", (seq, q), "bf16", Role.OUTPUT)]  # fmt: skip
    params = flash_attn.params(heads, kv_heads, dk, seq)
    return _one_launch("attention", args, Launch("flash_attn", params, ("q", "k", "v"), ("o",)))


def _gflops(flops: float, rate: float) -> float:
    return flops / (rate * 1e9)


# Where our kernels differ in structure from the measured upstream ones.
GEMM_NOTE = (
    "ours: 2x2 blocked bfp16 8x8x8 mmuls on tiles pre-tiled by the memory tiles, as "
    "upstream mm.cc, but bf16 operands converted to bfp16 on the core once per call and "
    "the fp32 acc read and written per K tile of 32; the call waits on its 8 KiB of x and w"
)
GEMV_NOTE = (
    "ours (gemv.cc, 512-B runs) in upstream matvec.py's layout: 1 weight channel per "
    "column (upstream's goes through the memory tile, ours straight to a core); our "
    "ELFs' GEMVs use 2 per column, which the model prices ~2x faster, untested by any "
    "measurement"
)
ATTN_NOTE = (
    "ours: bfp16 8x8x8 mmuls computed transposed (S^T = K Q^T, O^T = V^T P^T, so the "
    "softmax is lane-wise per query), Q to bfp16 once per query block, K (as value and "
    "rest) and V^T once per key block, bf16 exp2, 32x32 blocks, query blocks over all 32 "
    "cores; K and V re-read "
    "per round in 128-B runs (shim-bound); upstream attn_npu2.cc: bfp16 8x8x8, bf16 "
    "softmax, 64x64 tiles"
)


def points() -> list[Point]:
    """The published NPU2 points (docs/hardware.md section 8, at their sources)."""
    gemm_src, gemv_src = AIR + "GEMM_bf16_in_fp32_out.md", AIR + "GEMV_bf16.md"
    add_src, fa_src = AIR + "EltwiseAdd_bf16.md", AIR + "FlashAttention_bf16.md"
    out = []
    for (m, k, n), rate in (
        ((2048, 2048, 2048), 8508), ((4096, 4096, 4096), 9329), ((2048, 8192, 2048), 9797),
        ((2048, 2048, 8192), 8278), ((2048, 2048, 512), 7342), ((512, 512, 512), 1791),
    ):  # fmt: skip
        name, seconds = f"bf16 GEMM {m}x{k}x{n} ({rate} GFLOP/s)", _gflops(2 * m * k * n, rate)
        out.append(Point(name, seconds, gemm_src, gemm_ours(m, k, n), note=GEMM_NOTE))
    for (m, k), us, fit in (
        ((2048, 2048), 330, True), ((16384, 2048), 2193, True), ((8192, 2048), 1067, False),
        ((49152, 2048), 6187, False), ((512, 2048), 136, False), ((2048, 8192), 1082, False),
    ):  # fmt: skip
        out.append(Point(f"bf16 GEMV {m}x{k}", us * 1e-6, gemv_src, gemv_ours(m, k), fit,
                         GEMV_NOTE))  # fmt: skip
    for total, columns, us, fit in (
        (4194304, 1, 2759, True), (4194304, 8, 437, True), (8388608, 8, 798, True),
        (2097152, 8, 277, False), (1048576, 8, 175, False),
    ):  # fmt: skip
        out.append(Point(f"bf16 add N={total}, {columns} column(s)", us * 1e-6, add_src,
                         add_ours(total, columns), fit))  # fmt: skip
    for seq, heads, kv, ms in ((2048, 32, 8, 15.75), (2048, 32, 32, 16.9), (16384, 2, 2, 39.6)):
        out.append(Point(f"causal attention {seq}, {heads}/{kv} heads, dk 64", ms * 1e-3,
                         fa_src, attention_ours(seq, heads, kv), note=ATTN_NOTE))  # fmt: skip
    return out


@dataclass(frozen=True)
class Row:
    point: Point
    modeled: timing.ElfTime

    @property
    def error(self) -> float:
        return self.modeled.seconds / self.point.measured_s - 1


def calibration() -> list[Row]:
    """Every point with its model."""
    return [Row(point, point.model()) for point in points()]


def calibration_json(rows: list[Row]) -> dict:
    return {"points": [
        {"name": r.point.name, "measured": r.point.measured_s, "modeled": r.modeled.seconds,
         "error": round(r.error, 4), "use": r.point.use, "note": r.point.note}
        for r in rows
    ]}  # fmt: skip


def calibration_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    """Model vs measured per published point, with the error of each."""
    return [
        (r.point.name, f"{1e3 * r.point.measured_s:.3f}", f"{r.modeled.ms:.3f}",
         f"{100 * r.error:+.1f}%", r.point.use, r.modeled.launches[0].bound, r.point.note)
        for r in rows
    ]  # fmt: skip


# -- the tables ------------------------------------------------------------------------------

# The seed's measured Llama-3.2-1B times on Strix (ms), from the file the runtime's
# report reads too (aierun/data/seed_profile.json).
SEED = seed_profile()


def with_mma(spec: ElfSpec, mma: str | None) -> ElfSpec:
    """The spec with its GEMM launches' matmul mode set to `mma` (None: as specified)."""
    if mma is None:
        return spec
    launches = tuple(
        replace(launch, params={**launch.params, "mma": mma}) if launch.op == "gemm" else launch
        for launch in spec.launches
    )
    return replace(spec, launches=launches)


def llama_rows(
    seq_len: int = 2048, mma: str | None = None, weights: str = "bf16"
) -> tuple[list[tuple[str, ...]], dict[str, float], dict[str, float]]:
    """Per ELF of Llama-3.2-1B at `seq_len`: modeled, the seed's measured, the floor
    (aierun/profiling/roofline.py) and what bounds the slowest launch; and the per-phase
    sums at the turbo and at the nominal clock.
    `mma` overrides the GEMMs' matmul mode (bf16 or bfp16) to compare the two;
    `weights` is the decode GEMVs' weight type (aiebuild/weights.py WEIGHT_TYPES)."""
    from aiebuild.specs import model_specs
    from aierun.model import ModelShape
    from aierun.profiling.roofline import NPU2_RATES, elf_cost
    from tools.random_llama import LLAMA_3_2_1B

    shape = ModelShape.from_config(LLAMA_3_2_1B)
    rows, modeled, nominal = [], {}, {}
    for spec in model_specs(shape, [seq_len], weights, context=seq_len):
        if spec.params.get(WALK):  # decode at the 2048th position: the whole cache's walk
            continue
        spec = with_mma(spec, mma)
        elf = placed.elf_time(spec)
        modeled[spec.name], nominal[spec.name] = elf.ms, elf.at_nominal_ms
        slowest = max(elf.launches, key=lambda launch: launch.seconds)
        floor_ms = 1e3 * NPU2_RATES.floor_s(elf_cost(spec))
        rows.append((
            spec.instance, f"{elf.ms:.2f}", f"{SEED.elf_ms[spec.name]:.1f}", f"{floor_ms:.2f}",
            f"{elf.ms / floor_ms:.1f}x", f"{slowest.label}: {slowest.bound}",
        ))  # fmt: skip
    return rows, placed.phase_ms(modeled, shape.n_layers), placed.phase_ms(nominal, shape.n_layers)


def markdown(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama", action="store_true", help="also model Llama-3.2-1B")
    parser.add_argument("--mma", choices=("bf16", "bfp16"), help="the GEMMs' matmul mode")
    parser.add_argument("--weights", default="bf16", help="the decode GEMVs' weight type")
    parser.add_argument("--json", type=Path, help="write the points to this file")
    args = parser.parse_args(argv)
    rows = calibration()
    columns = ("point", "measured ms", "model ms", "error", "use", "bound", "structure")
    print(markdown(columns, calibration_rows(rows)))
    if args.json:
        args.json.write_text(json.dumps(calibration_json(rows), indent=2) + "\n")
    if args.llama:
        table, phases, nominal = llama_rows(mma=args.mma, weights=args.weights)
        columns = ("ELF", "modeled ms", "seed ms", "floor ms", "modeled / floor", "bound")
        print()
        print(markdown(columns, table))
        print()
        print(f"clock {timing.CLOCK_HZ / 1e9:.2f} GHz (turbo): prefill kernel time "
              f"{phases['prefill']:.1f} ms modeled (seed {SEED.prefill_kernel_ms:.0f} ms); "
              f"decode token: {phases['decode']:.2f} ms modeled "
              f"(seed {SEED.decode_kernel_ms_per_token:.0f} ms)")  # fmt: skip
        print(
            f"clock {timing.NOMINAL_CLOCK_HZ / 1e9:.3f} GHz (nominal): prefill "
            f"{nominal['prefill']:.1f} ms, decode token {nominal['decode']:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
