"""A slot model of the AIE2P core: the cycles of one kernel call from the operations it
issues, counted by the host aie_api as the real aie_api expands each call on AIE2P
(kernels_src/host/aie_api/detail/counts.hpp; aiebuild/array/kernel_counts.py runs the
entry point once and caches the counts).

The core issues one VLIW bundle per cycle; a call takes at least, for every slot, its
issues over the slot's issues per cycle, and at least its chain of serially dependent
multiply-accumulates times their issue interval. Cycles = the largest of these bounds
(the compiler is assumed to pack the slots perfectly and to software-pipeline the
loops: an optimistic bound per call, which is why the uncounted work is named below).

Rates (docs/hardware.md section 11; "⚠" = not stated for XDNA 2 at the source):
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Params = dict[str, int | float | bool | str]  # a kernel object's -D parameters

# "One VLIW instruction can support a maximum of two loads, one store, one scalar
# operation, one fixed-point or bfloat16 vector operation, and one move instruction"
# (AMD UG1603 2026.1, Architecture Overview, for AIE-ML / AIE-ML v2 ⚠ XDNA 2). A load or
# store is one access of up to 512 bits on XDNA 2 (aie_api dc3ab77 aie_doc.hpp, vector
# alignment table: "XDNA 2 <td> 128b <td> 256b <td> 512b").
LOADS_PER_CYCLE = 2.0
STORES_PER_CYCLE = 1.0
# MACs, shuffles, accumulator adds, max, select and exp2 all take the one vector slot.
VECTOR_OPS_PER_CYCLE = 1.0
# Register moves: inserts / extracts of parts, broadcasts, vector <-> scalar, and the
# up-shift / shift-round-saturate conversions between vectors and accumulators, which
# AMD AM020 (Register Move Functionality) lists as the core's move paths ("Move one
# 128-bit V-register to an arbitrary V-register in one cycle"). The fp32 -> bfp16
# conversion is counted here too (⚠ its slot is not documented).
MOVES_PER_CYCLE = 1.0
SCALAR_OPS_PER_CYCLE = 1.0  # "Scalar unit: one instruction per cycle" (AM027, section 11)
# A multiply-accumulate into an fp32 accumulator that the previous MAC wrote waits for
# it: "a floating-point accumulation requires two cycles" (AMD Vitis-Tutorials AI Engine
# Development, matrix-vector part 2a, citing AM009's pipeline: AIE1 ⚠ AIE2P). The 8
# mac_elem_32 of an emulated bf16 4x8x8 mmul are such a chain, and so is an mmul
# accumulated over K on one accumulator.
DEPENDENT_MAC_CYCLES = 2.0

# Not counted: plain C++ in the kernels (scalar float arithmetic, address arithmetic,
# loop control). Innermost loops are taken as software-pipelined with zero-overhead
# hardware loops; the call, its set-up and its locks are timing.CALL_OVERHEAD_CYCLES.

# Slot class -> (the counters it issues, issues per cycle). A load or store counter of
# 128 or 256 bits is one access each; the 512-bit counters already count accesses.
SLOTS: Mapping[str, tuple[tuple[str, ...], float]] = {
    "load": (("load_128", "load_256", "load_512"), LOADS_PER_CYCLE),
    "store": (("store_128", "store_256", "store_512"), STORES_PER_CYCLE),
    "vector": (("mac", "alu"), VECTOR_OPS_PER_CYCLE),
    "move": (("move", "convert"), MOVES_PER_CYCLE),
    "scalar": (("scalar",), SCALAR_OPS_PER_CYCLE),
}


@dataclass(frozen=True)
class CallCycles:
    """One call: its cycles and, per slot (and the MAC chain), the bound it sets."""

    bounds: dict[str, float]

    @property
    def cycles(self) -> float:
        return max(self.bounds.values(), default=0.0)

    @property
    def bound(self) -> str:
        """The slot (or "mac chain") that sets the call's cycles."""
        return max(self.bounds, key=self.bounds.__getitem__) if self.bounds else "nothing"


def call_cycles(counts: Mapping[str, int]) -> CallCycles:
    """The slot model's cycles of one call that issued `counts` (counts.hpp classes)."""
    bounds = {
        slot: sum(counts.get(name, 0) for name in names) / rate
        for slot, (names, rate) in SLOTS.items()
    }
    bounds["mac chain"] = counts.get("mac_dependent", 0) * DEPENDENT_MAC_CYCLES
    return CallCycles(bounds)
