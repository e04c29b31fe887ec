"""The hardware-rules check: what the NPU2 (AIE2P) array and mlir-aie 1.4 accept, checked on
the program each design actually builds (recorded through `aiebuild.array.iron_record`, placed
by `aiebuild.array.placement`), before anything compiles.

`check(program) -> Report` checks one recorded program; `check_launch(spec, launch)` records,
places and checks one launch of an ELF; `require_legal(specs)` checks every launch of
every ELF and raises one `RulesError` listing every violation (all of them, not just the
first), each naming the ELF, the launch, the tile, the rule, the value, the limit and
what to change. `doit check` prints `table(...)` of the per-launch `Usage`; every
`doit compile` runs `require_legal` before it plans a build, for both targets.

Each limit is one constant below with its upstream source: mlir-aie v1.4.0 = db06374
(**MA**), aie-rt e2aca22 (**RT**, mlir-aie's submodule pin); the facts with their quotes
are in docs/hardware.md sections 2-5. The array geometry and the DMA channel counts
the placer needs live in `aiebuild.array.placement` (`DMA_CHANNELS`) and `iron_record.NPU2`.

What is counted where:
- A core: the buffers of each fifo end on it (depth x object size, each buffer aligned
  to the core's load/store width), the buffers of shared-memory fifos created on it,
  its Worker's Buffers and its stack; two locks and depth x repeat buffer descriptors
  per DMA fifo end (the ObjectFifo lowering's producer/consumer lock pair and one BD
  per buffer); one Worker per core.
- A memory tile: a link's buffers (the split's input, the join's output, the larger
  side of a forward: AIEObjectFifoStatefulTransform.cpp createObjectFifoElements), two
  locks per linked sub-fifo, BDs per end times the split/join factor on the wide side,
  counted per channel parity (even channels own BDs 0-23, odd 24-47).
- A shim tile: one BD per runtime DMA task (IRON 1.4 emits one BD per fill/drain,
  python/dialects/aiex.py shim_dma_single_bd_task), live from its start until the
  TaskGroup.finish() that frees it; the same count per channel against the task queue.
  A pattern that aie-decompose-large-dma-bd could split into several BDs is held to
  one-BD legality: the task's repeat count (outermost size - 1) would repeat the
  whole decomposed chain.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from aiebuild.array.iron_record import (
    NPU2,
    Finish,
    Link,
    Loop,
    ObjectFifoHandle,
    Program,
    TensorAccessPattern,
    Transfer,
)
from aiebuild.array.placement import (
    DMA_CHANNELS,
    Direction,
    Endpoint,
    Placement,
    TileId,
    TileKind,
    place,
)
from aierun.abi import ElfSpec, Launch
from aierun.errors import UserError

CORE, MEM, SHIM = TileKind.CORE, TileKind.MEM, TileKind.SHIM

# --- limits ---------------------------------------------------------------------------
# Memory: MA include/aie/Dialect/AIE/IR/AIETargetModel.h, AIE2TargetModel
# `getLocalMemorySize() ... 0x00010000`, `getMemTileSize() ... 0x00080000`.
CORE_DATA_MEMORY = 0x10000
MEM_TILE_MEMORY = 0x80000
# MA include/aie/Dialect/AIE/IR/AIEOps.td, aie.core:
# `DefaultValuedAttr<AIEI32Attr, "0x400">:$stack_size` (IRON Worker stack_size=None keeps it).
DEFAULT_STACK = 0x400
# MA AIETargetModel.h `getComputeTileLoadStoreBusWidth() ... 256` (bits): the buffer
# allocator (lib/Dialect/AIE/Transforms/AIEAssignBuffers.cpp) aligns core buffers to it.
CORE_BUFFER_ALIGNMENT = 256 // 8
# MA AIETargetModel.h `getNumLocks ... MemTile ? 64 : 16`, `getMaxLockValue() ... 0x3F`.
LOCKS = {CORE: 16, MEM: 64}
LOCK_VALUE_MAX = 0x3F
# MA AIETargetModel.h `getNumBDs ... MemTile ? 48 : 16`; `isBdChannelAccessible`: even
# channels of a memory tile use BDs 0-23, odd ones 24-47.
BDS = {CORE: 16, MEM: 48, SHIM: 16}
MEM_TILE_BDS_PER_PARITY = 24
# RT driver/src/dma/xaie_dma.c `#define XAIE_DMA_MAX_QUEUE_SIZE 4U` (xaie2pgbl_reginit.c
# `.StartQSizeMax = 4U`): tasks a shim channel's start queue holds.
SHIM_TASK_QUEUE = 4
# MA AIETargetModel.h `getBDMaxDims`: "MemTile BDs support 4 ND dimensions; core and shim
# BDs support 3"; a shim task adds the iteration dimension, so a runtime access pattern
# has at most 4 (python/dialects/aiex.py: "shim DMA BD supports at most 4 dimensions").
BD_DIMS = {CORE: 3, MEM: 4, SHIM: 3}
SHIM_PATTERN_DIMS = 4
# MA AIETargetModel.h `getDmaBdMaxLen`: Buffer_Length is 14 bits (core), 17 (memory
# tile), 32 (shim), in 32-bit words.
BD_LENGTH_WORDS = {CORE: (1 << 14) - 1, MEM: (1 << 17) - 1, SHIM: (1 << 32) - 1}
# MA AIETargetModel.h `getDmaBdWrapBits` (core 8, else 10) and `getDmaBdStepBits`
# (shim 20, memory tile 17, core 13); a step is stored as words - 1, so the largest
# stride is 2^bits words (lib/Dialect/AIEX/IR/AIEXDialect.cpp verifyStridesWraps).
WRAP_MAX = {CORE: (1 << 8) - 1, MEM: (1 << 10) - 1, SHIM: (1 << 10) - 1}
STRIDE_MAX_WORDS = {CORE: 1 << 13, MEM: 1 << 17, SHIM: 1 << 20}
# The iteration dimension of a BD (the outermost size of a runtime pattern whose stride
# is > 0): a 6-bit field holding size - 1, MA AIEXDialect.cpp NpuWriteBdOp::verify
# "Iteration Size exceeds the [0:63] range.".
ITERATION_SIZE_MAX = 64
# With stride 0 the outermost size is the task's repeat count instead; verifyStridesWraps
# still checks size - 1 against `1 << iter_bits` ("Size 3 exceeds the [1:64] range."), and
# NpuPushQueueOp::verify "Repeat count exceeds the [0:255] range." bounds the count.
REPEAT_SIZE_MAX = min((1 << 6) + 1, 256)
# MA AIETargetModel.h `getAddressGenGranularity() ... 32` (bits): offsets, lengths and
# strides are whole 32-bit words ("Offset must be 4-byte-aligned.", "Transfer sizes must be
# multiples of 4 bytes", "Stride i ... is not divisible by 4").
WORD = 32 // 8
# A split's outputs (a join's inputs) each take one memory-tile DMA channel; the link's
# other side takes one more (AIEPlacer.cpp buildChannelRequirements).
LINK_FANOUT_MAX = DMA_CHANNELS[MEM]


# --- what the check returns -----------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One broken rule: where, which rule, the value against the limit, and the fix."""

    rule: str
    tile: TileId | None
    value: int
    limit: int
    detail: str  # what makes up the value
    fix: str
    alignment: bool = False  # the value must be a multiple of the limit

    def describe(self) -> str:
        where = f"{self.tile.kind.value} {self.tile}: " if self.tile else ""
        limit = (
            f"it must be a multiple of {self.limit}"
            if self.alignment
            else f"the limit is {self.limit}"
        )
        fix = self.fix[:1].upper() + self.fix[1:]
        return f"{where}{self.rule} is {self.value} ({self.detail}), {limit}. {fix}"


@dataclass(frozen=True)
class Usage:
    """What one launch uses: cores, DMA channels (all tiles), the most buffer
    descriptors on one core, the most data memory on one core, the most shim BDs live."""

    cores: int = 0
    dma_channels: int = 0
    core_bds: int = 0
    core_memory: int = 0
    shim_bds: int = 0

    def peak(self, other: Usage) -> Usage:
        """Launches run one after the other: an ELF needs the most any launch needs."""
        return Usage(*(max(a, b) for a, b in zip(self.values(), other.values(), strict=True)))

    def values(self) -> tuple[int, ...]:
        return (self.cores, self.dma_channels, self.core_bds, self.core_memory, self.shim_bds)


@dataclass
class Report:
    """The check of one program: its placement, usage and every violation."""

    placement: Placement
    usage: Usage
    violations: list[Violation] = field(default_factory=list)


@dataclass
class LaunchCheck:
    """The check of one launch of one ELF, or the design's own refusal (tiling)."""

    spec: ElfSpec
    launch: Launch
    report: Report | None
    design_error: str | None = None

    @property
    def where(self) -> str:
        bucket = f" (prefill bucket {self.spec.bucket})" if self.spec.bucket else ""
        name = self.launch.label or self.launch.op
        return f"{self.spec.instance}{bucket}, launch '{name}' ({self.launch.op})"

    def messages(self) -> list[str]:
        if self.design_error is not None:
            return [
                f"{self.where}: {self.design_error}. Choose prefill buckets that are "
                "multiples of 32 (`doit compile buckets=64,256`)."
            ]
        return [f"{self.where}, {v.describe()}" for v in self.report.violations]


class RulesError(UserError):
    """Designs the NPU2 hardware or mlir-aie 1.4 would refuse."""


# --- entry points -----------------------------------------------------------------------


# Each launch of an ELF is recorded, placed and checked by aiebuild/placed.py, which
# gives its LaunchCheck; `check` is the rules of one recorded program.
def check(program: Program, placement: Placement | None = None) -> Report:
    """Every rule over one recorded program, placed as mlir-aie 1.4 would place it."""
    placement = placement or place(program)
    violations = [
        *_array_rules(program, placement),
        *_core_rules(program, placement),
        *_mem_tile_rules(program, placement),
        *_shim_rules(program, placement),
        *_pattern_rules(program, placement),
    ]
    # one message for a rule a pattern breaks in every phase of the sequence
    return Report(placement, _usage(program, placement), list(dict.fromkeys(violations)))


def refuse_violations(checks: Iterable[LaunchCheck]) -> None:
    """One RulesError naming every violation of these checks, if there is any."""
    messages = [message for c in checks for message in c.messages()]
    if messages:
        count = f"{len(messages)} violation{'s' if len(messages) > 1 else ''}"
        raise RulesError(
            f"the npu2 designs break the hardware rules ({count}; see aiebuild/array/rules.py for "
            "the limits and their sources):\n" + "\n".join(f"- {m}" for m in messages)
        )


def elf_usage(checks: Iterable[LaunchCheck]) -> dict[str, tuple[int, Usage]]:
    """Per ELF instance: its launch count and the peak usage over its launches."""
    usage: dict[str, tuple[int, Usage]] = {}
    for c in checks:
        launches, peak = usage.get(c.spec.instance, (0, Usage()))
        own = c.report.usage if c.report else Usage()
        usage[c.spec.instance] = (launches + 1, peak.peak(own))
    return usage


def table(checks: Iterable[LaunchCheck]) -> str:
    """The per-ELF table `doit check` prints."""
    header = (
        "ELF",
        "launches",
        "cores",
        "DMA channels",
        f"core BDs (/{BDS[CORE]})",
        f"core memory (/{CORE_DATA_MEMORY // 1024} KiB)",
        f"shim BDs live (/{BDS[SHIM]})",
    )
    rows = [header]
    for name, (launches, u) in elf_usage(checks).items():
        memory = f"{u.core_memory / 1024:.1f} KiB"
        rows.append((name, launches, u.cores, u.dma_channels, u.core_bds, memory, u.shim_bds))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


# --- usage ------------------------------------------------------------------------------


def _usage(program: Program, placement: Placement) -> Usage:
    cores = _tiles_of(placement, CORE)
    return Usage(
        cores=len(placement.workers),
        dma_channels=sum(e.uses_dma for e in placement.endpoints.values()),
        core_bds=max((_core_bds(placement, t)[0] for t in cores), default=0),
        core_memory=max((_core_memory(program, placement, t)[0] for t in cores), default=0),
        shim_bds=max((peak for peak, _ in _shim_bd_peaks(program, placement).values()), default=0),
    )


def _tiles_of(placement: Placement, kind: TileKind) -> list[TileId]:
    return [t for t in placement.tiles() if t.kind is kind]


# --- the array --------------------------------------------------------------------------


def _array_rules(program: Program, placement: Placement) -> Iterator[Violation]:
    for tile in placement.tiles():
        if not (0 <= tile.col < NPU2.columns):
            yield Violation(
                "column", tile, tile.col, NPU2.columns - 1, "columns count from 0",
                f"NPU2 has {NPU2.columns} columns (MA AIETargetModel.h `columns() ... 8`): "
                "pin tiles to columns 0-7 or use fewer Workers (32 cores at most).",
            )  # fmt: skip
        if not (0 <= tile.row < NPU2.rows):
            yield Violation(
                "row", tile, tile.row, NPU2.rows - 1, "rows count from 0",
                "NPU2 has rows 0 (shim), 1 (memory tiles) and 2-5 (cores).",
            )  # fmt: skip
    pinned = (  # what is pinned where, the row it belongs to, and why
        (placement.workers, "Worker", CORE, 2, "a Worker runs on a core: rows 2-5."),
        (placement.links, "link", MEM, 1,
         "split, join and forward run on a memory tile (row 1): \"ObjectFifoLinkOp join and "
         'distribute are unavailable on compute or shim tiles".'),
        (placement.shims, "runtime endpoint", SHIM, 0,
         "fill() and drain() run on a shim tile (row 0)."),
    )  # fmt: skip
    for items, what, kind, row, fix in pinned:
        for item, tile in items.items():
            if tile.kind is not kind:
                detail = f"{item} is pinned to row {tile.row}"
                yield Violation(f"{what} tile kind", tile, tile.row, row, detail, fix)
    for tile, count in Counter(placement.workers.values()).items():
        if count > 1:
            yield Violation(
                "Workers per core", tile, count, 1, "Workers pinned to the same tile",
                "give each Worker its own core.",
            )  # fmt: skip


# --- cores ------------------------------------------------------------------------------


def _core_rules(program: Program, placement: Placement) -> Iterator[Violation]:
    for tile in _tiles_of(placement, CORE):
        yield from _channel_rule(placement, tile)
        yield from _above(
            "buffer descriptors",
            tile,
            *_core_bds(placement, tile),
            BDS[CORE],
            "each DMA fifo end takes depth x repeat BDs: lower depths or repeat counts, "
            "or move fifos to another core.",
        )
        yield from _above(
            "locks",
            tile,
            *_core_locks(placement, tile),
            LOCKS[CORE],
            "each fifo end takes two locks: fewer fifos on this core.",
        )
        yield from _above(
            "data memory (bytes)", tile, *_core_memory(program, placement, tile),
            CORE_DATA_MEMORY, "use smaller fifo objects, lower depths or smaller buffers, or "
            "split the work over more cores.",
        )  # fmt: skip


def _above(
    rule: str, tile: TileId, value: int, detail: str, limit: int, fix: str
) -> Iterator[Violation]:
    """The violation of a rule whose `value` (made up as `detail` says) may not exceed
    `limit`, if it does."""
    if value > limit:
        yield Violation(rule, tile, value, limit, detail, fix)


def _channel_rule(placement: Placement, tile: TileId) -> Iterator[Violation]:
    limit = DMA_CHANNELS[tile.kind]
    fixes = {
        CORE: "feed a core at most 2 fifos each way: join inputs in a memory tile, split "
        "the work over more Workers, or pass core-to-core fifos through shared memory.",
        MEM: "spread the links over more memory tiles (pin them to other columns).",
        SHIM: "pin runtime fifo ends to other shim columns (`prod(tile=Tile(col, 0))`) or "
        "move fewer fifos through this shim.",
    }
    for direction in Direction:
        ends = [e for e in placement.at(tile) if e.uses_dma and e.direction is direction]
        if len(ends) > limit:
            yield Violation(
                f"{direction.value} DMA channels", tile, len(ends), limit,
                ", ".join(str(e) for e in ends), fixes[tile.kind],
            )  # fmt: skip


def _endpoint_bds(end: Endpoint) -> int:
    """BDs of one fifo end: one per buffer, times the repeat count on the producer side,
    times the fan-out on a link's wide side."""
    repeat = (end.fifo.repeat_count or 1) if end.handle.is_prod else 1
    return end.handle.depth * repeat * _link_factor(end.handle)


def _link_factor(handle: ObjectFifoHandle) -> int:
    link = handle.endpoint
    if not isinstance(link, Link):
        return 1
    if link.kind == "split" and not handle.is_prod:
        return len(link.outputs)
    if link.kind == "join" and handle.is_prod:
        return len(link.inputs)
    return 1


def _summed(items: list[tuple[str, int]]) -> tuple[int, str]:
    return sum(n for _, n in items), ", ".join(f"{name} {n}" for name, n in items)


def _core_bds(placement: Placement, tile: TileId) -> tuple[int, str]:
    ends = [e for e in placement.at(tile) if e.uses_dma]
    return _summed([(str(e), _endpoint_bds(e)) for e in ends])


def _core_locks(placement: Placement, tile: TileId) -> tuple[int, str]:
    """Two locks (producer, consumer) per DMA fifo end and per shared fifo created here."""
    items = [(str(e), 2) for e in placement.at(tile) if e.uses_dma]
    items += [(f"{f.name} (shared)", 2) for f, t in placement.buffer_tiles.items() if t == tile]
    return _summed(items)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // CORE_BUFFER_ALIGNMENT) * CORE_BUFFER_ALIGNMENT


def _core_memory(program: Program, placement: Placement, tile: TileId) -> tuple[int, str]:
    """Data memory of one core: fifo buffers, shared fifo buffers, Buffers, stack."""
    items = [
        (str(e), e.handle.depth * _aligned(e.fifo.nbytes)) for e in placement.at(tile) if e.uses_dma
    ]
    for fifo, home in placement.buffer_tiles.items():
        if home == tile:
            depth = max(h.depth for h in (fifo.producer, *fifo.consumers))
            items.append((f"{fifo.name} (shared)", depth * _aligned(fifo.nbytes)))
    workers = [w for w, t in placement.workers.items() if t == tile]
    items += [(b.name, _aligned(b.nbytes)) for w in workers for b in w.buffers]
    items += [("stack", w.stack_size or DEFAULT_STACK) for w in workers]
    return _summed(items)


# --- memory tiles -----------------------------------------------------------------------


def _mem_tile_rules(program: Program, placement: Placement) -> Iterator[Violation]:
    for link in program.links:
        fanout = len(link.outputs) if link.kind == "split" else len(link.inputs)
        if fanout > LINK_FANOUT_MAX:
            yield Violation(
                f"{link.kind} fan-out", placement.links[link], fanout, LINK_FANOUT_MAX,
                f"{link}", "each linked fifo takes a memory-tile DMA channel: chain two links "
                "over two memory tiles.",
            )  # fmt: skip
    for tile in _tiles_of(placement, MEM):
        yield from _channel_rule(placement, tile)
        yield from _mem_tile_bd_rules(placement, tile)
        links = [link for link, t in placement.links.items() if t == tile]
        locks = _summed([(str(link), 2 * len(link.inputs + link.outputs)) for link in links])
        yield from _above(
            "locks",
            tile,
            *locks,
            LOCKS[MEM],
            "each linked fifo takes two locks: spread the links over more memory tiles.",
        )
        memory = _summed([(str(link), _link_bytes(link)) for link in links])
        yield from _above(
            "data memory (bytes)",
            tile,
            *memory,
            MEM_TILE_MEMORY,
            "lower the linked fifos' depths or objects, or spread the links over more "
            "memory tiles.",
        )


def _mem_tile_bd_rules(placement: Placement, tile: TileId) -> Iterator[Violation]:
    ends = [e for e in placement.at(tile) if e.uses_dma]
    for parity, name in ((0, "even"), (1, "odd")):
        items = [(f"{e} ch{e.channel}", _endpoint_bds(e)) for e in ends if e.channel % 2 == parity]
        yield from _above(
            f"buffer descriptors of the {name} channels", tile, *_summed(items),
            MEM_TILE_BDS_PER_PARITY, "lower the linked fifos' depths or repeat counts, or "
            "spread the links over more memory tiles.",
        )  # fmt: skip


def _link_bytes(link: Link) -> int:
    """The buffers a link keeps on its memory tile: the split's input, the join's
    output, or the larger side of a forward (createObjectFifoElements)."""
    wide = {"split": link.inputs[0], "join": link.outputs[0]}.get(link.kind)
    if wide is None:
        wide = max(link.inputs[0], link.outputs[0], key=lambda h: h.fifo.size)
    return wide.depth * wide.fifo.nbytes


# --- shim tiles and the runtime sequence ------------------------------------------------


def _shim_rules(program: Program, placement: Placement) -> Iterator[Violation]:
    for tile in _tiles_of(placement, SHIM):
        yield from _channel_rule(placement, tile)
    for (tile, channel), (peak, live) in _shim_bd_peaks(program, placement).items():
        if channel is None and peak > BDS[SHIM]:
            yield Violation(
                "live buffer descriptors", tile, peak, BDS[SHIM], live,
                "each fill/drain holds a BD until its TaskGroup.finish(): finish groups "
                "sooner or issue fewer transfers per group.",
            )  # fmt: skip
        if channel is not None and peak > SHIM_TASK_QUEUE:
            yield Violation(
                f"queued tasks on {channel}", tile, peak, SHIM_TASK_QUEUE, live,
                "a shim channel queues 4 tasks: finish the task group before a channel gets "
                "a 5th transfer.",
            )  # fmt: skip


def _sequence(body: list) -> Iterator:
    """The runtime sequence's nodes in order, loops unrolled."""
    for node in body:
        if isinstance(node, Loop):
            for _ in range(node.count):
                yield from _sequence(node.body)
        else:
            yield node


def _shim_bd_peaks(program: Program, placement: Placement) -> dict:
    """Per shim tile (channel None) and per shim channel ("MM2S 0", ...): the most tasks
    live at once, and which fifos' tasks they were."""
    live: dict[tuple[TileId, str | None], list[Transfer]] = defaultdict(list)
    peaks: dict[tuple[TileId, str | None], tuple[int, str]] = {}
    for node in _sequence(program.runtime.body):
        if isinstance(node, Transfer):
            end = placement.endpoints[node.handle]
            channel = f"{'MM2S' if end.handle.is_prod else 'S2MM'} {end.channel}"
            for key in ((end.tile, None), (end.tile, channel)):
                live[key].append(node)
                if len(live[key]) > peaks.get(key, (0, ""))[0]:
                    names = Counter(t.handle.name for t in live[key])
                    detail = ", ".join(f"{n} x{c}" for n, c in names.items())
                    peaks[key] = (len(live[key]), detail)
        elif isinstance(node, Finish):
            for key, transfers in live.items():
                live[key] = [t for t in transfers if t.group is not node.group]
    return peaks


# --- access patterns ----------------------------------------------------------------------


def _pattern_rules(program: Program, placement: Placement) -> Iterator[Violation]:
    for transfer in program.runtime.transfers():
        tile = placement.endpoints[transfer.handle].tile
        what = f"{'fill' if transfer.is_fill else 'drain'} of {transfer.handle.name}"
        yield from _runtime_pattern(transfer.tap, transfer.host.dtype, tile, what)
    for end in placement.endpoints.values():
        if end.uses_dma and end.tile.kind is not SHIM:
            yield from _fifo_end_rules(end)


def _runtime_pattern(
    tap: TensorAccessPattern, dtype: np.dtype, tile: TileId, what: str
) -> Iterator[Violation]:
    """A shim task's pattern (sizes and strides highest dimension first, in elements)."""
    item = dtype.itemsize
    pattern = f"{what}: sizes {list(tap.sizes)}, strides {list(tap.strides)}"
    if len(tap.sizes) > SHIM_PATTERN_DIMS:
        yield Violation(
            "access pattern dimensions", tile, len(tap.sizes), SHIM_PATTERN_DIMS, pattern,
            "fold dimensions together or split the transfer.",
        )  # fmt: skip
        return
    sizes = (1,) * (4 - len(tap.sizes)) + tap.sizes
    strides = (0,) * (4 - len(tap.strides)) + tap.strides
    if tap.offset * item % WORD:
        yield Violation(
            "offset (bytes)", tile, tap.offset * item, WORD, pattern,
            "start transfers at a multiple of 4 bytes.", alignment=True,
        )  # fmt: skip
    outer, outer_stride = sizes[0], strides[0]
    if outer_stride > 0 and outer > ITERATION_SIZE_MAX:
        yield Violation(
            "iteration size (outermost size, stride > 0)", tile, outer, ITERATION_SIZE_MAX,
            pattern, "split the outermost dimension over several transfers or fold part of it "
            "into an inner dimension.",
        )  # fmt: skip
    if outer_stride == 0 and outer > REPEAT_SIZE_MAX:
        yield Violation(
            "repeat size (outermost size, stride 0)", tile, outer, REPEAT_SIZE_MAX, pattern,
            "split the repeats over several transfers.",
        )  # fmt: skip
    inner = list(zip(sizes[1:], strides[1:], strict=True))
    yield from _dims_rules(inner, item, SHIM, tile, pattern, contiguous_exempt=True)
    if outer > 1 and outer_stride > 0:
        yield from _stride_rules([("outermost", outer_stride)], item, SHIM, tile, pattern)


def _fifo_end_rules(end: Endpoint) -> Iterator[Violation]:
    """A fifo end's BD on a core or memory tile: its length and its dimensions."""
    tile, kind, fifo = end.tile, end.tile.kind, end.fifo
    nbytes = _bd_bytes(end)
    what = f"{end}, {nbytes}-byte objects"
    if nbytes % WORD:
        yield Violation(
            "object length (bytes)", tile, nbytes, WORD, what,
            "make the fifo's objects a multiple of 4 bytes.", alignment=True,
        )  # fmt: skip
    if nbytes // WORD > BD_LENGTH_WORDS[kind]:
        yield Violation(
            "BD length (32-bit words)", tile, nbytes // WORD, BD_LENGTH_WORDS[kind], what,
            "use smaller fifo objects.",
        )  # fmt: skip
    lock_value = end.handle.depth * ((fifo.repeat_count or 1) if end.handle.is_prod else 1)
    if lock_value > LOCK_VALUE_MAX:
        yield Violation(
            "lock value (depth x repeat)", tile, lock_value, LOCK_VALUE_MAX, what,
            "lower the depth or the repeat count.",
        )  # fmt: skip
    dims = fifo.dims_to_stream if end.handle.is_prod else end.handle.dims_from_stream
    if dims:
        pattern = f"{end} {'dims_to_stream' if end.handle.is_prod else 'dims_from_stream'} {dims}"
        if len(dims) > BD_DIMS[kind]:
            yield Violation(
                "BD dimensions", tile, len(dims), BD_DIMS[kind], pattern,
                "use fewer dimensions (a memory tile takes 4).",
            )  # fmt: skip
        else:
            yield from _dims_rules(list(dims), fifo.dtype.itemsize, kind, tile, pattern)


def _bd_bytes(end: Endpoint) -> int:
    """What one BD of the end moves: its object, or on the memory-tile side of a
    resizing forward the link's whole buffer (Link.resizes)."""
    link = end.handle.endpoint
    if end.handle.is_prod and isinstance(link, Link) and link.resizes:
        return link.inputs[0].fifo.nbytes
    return end.fifo.nbytes


def _dims_rules(
    dims: list[tuple[int, int]],
    item: int,
    kind: TileKind,
    tile: TileId,
    pattern: str,
    contiguous_exempt: bool = False,
) -> Iterator[Violation]:
    """Wraps, strides and alignment of BD dimensions (highest first, in elements): sizes
    of the two innermost (three on a memory tile) in wrap fields, the innermost in
    words; strides in words. A contiguous shim transfer uses the linear length field
    instead of the wraps (AIEDMATasksToNPU.cpp `treatAsLinear`)."""
    (size0, stride0), rest = dims[-1], dims[:-1]
    if size0 * item % WORD:
        yield Violation(
            "innermost transfer length (bytes)", tile, size0 * item, WORD, pattern,
            "make the innermost size a multiple of 4 bytes.", alignment=True,
        )  # fmt: skip
    if item < WORD and size0 > 1 and stride0 != 1:
        yield Violation(
            "innermost stride for sub-word elements", tile, stride0, 1, pattern,
            'for <32-bit elements "inner-most dim stride must be 1": transpose in the kernel.',
        )  # fmt: skip
    if not (contiguous_exempt and _contiguous(dims)):
        wrapped = [size0 * item // WORD, *(s for s, _ in reversed(rest))]
        wrap_dims = 3 if kind is MEM else 2
        for index, size in enumerate(wrapped[:wrap_dims]):
            if size > WRAP_MAX[kind]:
                yield Violation(
                    f"size of dimension {index} (wrap field)", tile, size, WRAP_MAX[kind],
                    pattern, "split that dimension in two.",
                )  # fmt: skip
    strided = [(f"dimension {len(rest) - i}", st) for i, (s, st) in enumerate(rest) if s > 1]
    if stride0 != 1 and size0 > 1:
        strided.append(("dimension 0", stride0))
    yield from _stride_rules(strided, item, kind, tile, pattern)


def _stride_rules(
    strides: list[tuple[str, int]], item: int, kind: TileKind, tile: TileId, pattern: str
) -> Iterator[Violation]:
    for name, stride in strides:
        if stride * item % WORD:
            yield Violation(
                f"stride of the {name} (bytes)", tile, stride * item, WORD, pattern,
                "strides must be multiples of 4 bytes.", alignment=True,
            )  # fmt: skip
        elif stride * item // WORD > STRIDE_MAX_WORDS[kind]:
            yield Violation(
                f"stride of the {name} (32-bit words)", tile, stride * item // WORD,
                STRIDE_MAX_WORDS[kind], pattern, "reorder the dimensions or split the transfer.",
            )  # fmt: skip


def _contiguous(dims: list[tuple[int, int]]) -> bool:
    """A row-major scan (AIEXDialect.cpp isContiguousTransfer): each stride the product
    of the sizes inside it."""
    expected = 1
    for size, stride in reversed(dims):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True
