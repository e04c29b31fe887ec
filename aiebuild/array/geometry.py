"""The NPU2 array (AIE2P: Strix, Krackan) as the designs, the placer and the rules see
it: 8 columns, and in each column a shim tile (row 0, to DDR), a memory tile (row 1)
and 4 compute cores (rows 2-5) (docs/hardware.md section 1)."""

from __future__ import annotations

COLUMNS = 8
SHIM_ROW = 0
MEM_ROW = 1
FIRST_CORE_ROW = 2
CORE_ROWS = 4
ROWS = FIRST_CORE_ROW + CORE_ROWS


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (at least 1)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def cores(columns: int, core_rows: int = 1) -> dict[str, int]:
    """The launch params that give a launch `columns` x `core_rows` of the array; its
    design places one worker per core of that part."""
    return {"columns": columns, "core_rows": core_rows}
