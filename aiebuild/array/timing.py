"""The npu2 time model: how long one launch, and one call of an ELF, takes on a Strix
NPU, computed from the recorded IRON program of each launch (aiebuild/array/iron_record.py),
with no data.

Per launch, every resource is busy for a time:
- each core: its kernel calls, each the slot model's cycles of what the entry point
  issues (counted on the host build of the kernel, aiebuild/array/kernel_counts.py and
  core_model.py) plus CALL_OVERHEAD_CYCLES, at CLOCK_HZ; a call is never shorter than
  the stream delivering the objects it acquires per call (a DMA block per streamed
  step, whether or not the kernel skips the step), and cores that share a broadcast
  move in lockstep: a step costs the work unless every core skips it (`CallCost`);
- each core and memory-tile DMA channel: the bytes its ObjectFifo endpoints move,
  over the stream rate; each shim channel: the runtime sequence's transfers through it,
  priced per burst (`transfer_seconds`: a short contiguous run costs more per byte);
- each column's shim-to-DDR path and the whole array's DDR bandwidth: the bytes of
  the runtime sequence's fills and drains.
Overlap, stated simply: the resources work at the same time (double-buffered fifos),
so a launch takes as long as its busiest resource, which is what bounds it, plus the
pipeline's fill and drain, which nothing overlaps: before its first call a core waits
for the objects it acquires first, each brought whole over every hop of its path (a
memory tile forwards an object once it holds all of it), and after its last call its
last output object travels to DDR the same way (`_fill_s`, `_drain_s`). An ELF
call adds the dispatch (DISPATCH_S, which covers the first launch's configuration) and
a reconfiguration before every further launch: a fixed RECONFIGURE_S and the bytes that
launch's configuration writes (`configure_bytes`) at CONFIGURE_BYTES_PER_S.

Tiles, columns and DMA channels are where aiebuild/array/placement.py puts them (mlir-aie's
placer and ObjectFifo lowering); fifos between neighbouring cores share memory and use
no DMA.

Every rate is a named constant with its source (docs/hardware.md sections 6-8; "fit" =
solved from the published measurements that tools/calibrate.py then checks the
model against, `doit calibrate`). aiebuild/placed.py times whole ELFs with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiebuild.array import iron_record
from aiebuild.array.iron_record import (
    Acquire,
    Call,
    Element,
    ObjectFifo,
    ObjectFifoHandle,
    Program,
    Release,
    Worker,
)
from aiebuild.array.placement import DMA_CHANNELS, Placement, TileId, TileKind, place


@dataclass(frozen=True)
class CallCost:
    """One call of an entry point: the cycles of its work, and the share of its calls in
    which no core sharing its broadcast does the work (those cost only their data)."""

    cycles: float
    idle_share: float = 0.0


CallCycles = Callable[[Call], CallCost]  # prices one recorded call

# -- rates ------------------------------------------------------------------------------
# AIE clock: npu4 (Strix) H-clock top level 1800 MHz (amd/xdna-driver npu4_regs.c, the
# Turbo/High level; docs/hardware.md section 6). XRT's GEMM test uses the same clock.
CLOCK_HZ = 1.8e9
# The nominal clock, for the model without turbo: the lower entry of the same npu4 DPM
# pair `{1267, 1800}` (xdna-driver npu4_regs.c; docs/hardware.md section 6). Times at
# it are CLOCK_HZ / NOMINAL_CLOCK_HZ = 1.42x longer where the core bounds them
# (`ElfTime.at_nominal_ms`).
NOMINAL_CLOCK_HZ = 1.267e9
# Core and memory-tile DMA channels move one 32-bit word per cycle ("our stream switch
# moves data in 32-bit granularity", mlir-aie programming_guide section-4c, written for
# AIE2; the AIE2P width is not established, docs/hardware.md section 7).
STREAM_BYTES_PER_S = 4 * CLOCK_HZ
# One shim DMA channel to or from DDR, fit: Xilinx/mlir-air GEMV_bf16.md streams the
# matrix through one channel per column on 8 columns: 2048x2048 (8.39 MB) in 330 us and
# 16384x2048 (67.1 MB) in 2193 us, i.e. 58.7 MB in 1863 us more = 31.5 GB/s, 3.94 GB/s
# per channel.
# Upstream's matvec.py reads whole rows of A (tile_m x K contiguous) per column, so
# every burst of that fit is the longest one: this is the rate of 512-B bursts.
SHIM_CHANNEL_BYTES_PER_S = 3.94e9
# A shim DMA burst on npu2 is 64, 128, 256 or 512 B (Xilinx/mlir-aie
# lib/Dialect/AIE/IR/AIETargetModel.cpp, BaseNPU2TargetModel::
# getShimBurstEncodingsAndLengths; burst_length = 0, what IRON emits, selects the
# largest, AIEDialect.cpp getShimBurstLength). A burst cannot outrun the contiguous
# run it reads, so a run of r bytes takes ceil(r / 512) bursts.
SHIM_MAX_BURST_BYTES = 512
# Assumed, not measured: a burst costs a fixed overhead (address, DDR and response
# latency, the same for every length) plus its data at the channel's stream width
# (STREAM_BYTES_PER_S). The overhead is what makes a 512-B burst run at the fitted
# SHIM_CHANNEL_BYTES_PER_S: 512 B / 3.94 GB/s - 512 B / 7.2 GB/s = 59 ns. A 128-B
# burst then moves 1.66 GB/s, 2.4x slower per byte than a 512-B one.
SHIM_BURST_OVERHEAD_S = (
    SHIM_MAX_BURST_BYTES / SHIM_CHANNEL_BYTES_PER_S - SHIM_MAX_BURST_BYTES / STREAM_BYTES_PER_S
)
# Dispatch of one run, including the first configuration, fit: the same two GEMV
# points' intercept, 330 us - 8.39 MB / 31.5 GB/s = 64 us (mlir-aie #3793 reports a
# "~64 us persistent-stream floor" on NPU2).
DISPATCH_S = 64e-6
# One column's shim-to-DDR traffic (all its channels), fit: mlir-air EltwiseAdd_bf16.md
# on one column (a, b in, c out: 25.2 MB) takes 2759 us: 25.2 MB / (2759 - 64) us.
COLUMN_DDR_BYTES_PER_S = 9.34e9
# The whole array's DDR bandwidth, fit: the same add on 8 columns, N = 4M -> 8M
# (25.2 MB more) takes 798 - 437 = 361 us more: 69.7 GB/s; taken as 67 GB/s so that the
# 4M point (57.7 GB/s measured with dispatch) stays within a few percent too.
ARRAY_DDR_BYTES_PER_S = 67e9
# Reconfiguration between the launches of one ELF, its fixed part: mlir-air reports a
# ~80 us per-launch floor (RoPE "~80 us"); nod-ai/iree-amd-aie #1187 measures 79-82 us
# reconfiguration plus run with a control packet on Strix (106-116 us without, turbo
# off). Both are tiny designs, whose configuration writes little.
RECONFIGURE_S = 80e-6
# What a configuration writes besides that: every used core's program and its buffers'
# initial values (`configure_bytes`). A program's real size needs Peano's link; until
# then each is taken at the program memory's 16 KiB (docs/hardware.md section 2), an
# upper bound.
CORE_PROGRAM_BYTES = 16 * 1024
# Assumed, not measured: the configuration is read from DDR through one shim path at
# one channel's 512-B-burst rate, one column after another.
CONFIGURE_BYTES_PER_S = SHIM_CHANNEL_BYTES_PER_S
# Per kernel call: the call, its loop set-up and the fifo lock acquire/release around
# it (estimate, not measured: a few dozen instructions and lock round trips).
CALL_OVERHEAD_CYCLES = 100.0
CHANNELS = DMA_CHANNELS  # per tile kind and direction (docs/hardware.md section 2)


@dataclass(frozen=True)
class LaunchTime:
    """One launch: how long each resource is busy, in seconds."""

    label: str
    busy: dict[str, float]
    configure_bytes: int = 0  # what configuring the array for this launch writes
    fill_s: float = 0.0  # until the last core has what its first call needs
    drain_s: float = 0.0  # a core's last output object on its way to DDR

    @property
    def seconds(self) -> float:
        return max(self.busy.values(), default=0.0) + self.fill_s + self.drain_s

    @property
    def reconfigure_s(self) -> float:
        """Reconfiguring the array for this launch when another one ran before it."""
        return RECONFIGURE_S + self.configure_bytes / CONFIGURE_BYTES_PER_S

    @property
    def bound(self) -> str:
        """The busiest resource: what bounds the launch."""
        return max(self.busy, key=self.busy.__getitem__) if self.busy else "nothing"

    def at_clock_s(self, clock_hz: float) -> float:
        """The launch at another array clock: cores and their streams scale (the fill
        and the drain as a whole, their shim hops too: an upper bound)."""
        scale = CLOCK_HZ / clock_hz
        busiest = max(
            ((t * scale if name.startswith(("core", "memtile")) else t)
             for name, t in self.busy.items()),
            default=0.0,
        )  # fmt: skip
        return busiest + (self.fill_s + self.drain_s) * scale


@dataclass(frozen=True)
class ElfTime:
    """One call of an ELF: dispatch (which covers the first launch's configuration),
    its launches in order and the reconfiguration before each further one."""

    name: str
    launches: list[LaunchTime]
    dispatch_s: float = DISPATCH_S

    @property
    def fixed_s(self) -> float:
        return self.dispatch_s + sum(launch.reconfigure_s for launch in self.launches[1:])

    @property
    def seconds(self) -> float:
        return self.fixed_s + sum(launch.seconds for launch in self.launches)

    @property
    def ms(self) -> float:
        return 1e3 * self.seconds

    @property
    def at_nominal_ms(self) -> float:
        """The same call with the array at NOMINAL_CLOCK_HZ: core and stream time scale
        with the clock, the DDR and shim rates and the fixed costs do not."""
        return 1e3 * (self.fixed_s + sum(t.at_clock_s(NOMINAL_CLOCK_HZ) for t in self.launches))

    def summary(self) -> dict[str, Any]:
        """What the artifact records: the total and, per launch, its time and bound."""
        return {
            "ms": round(self.ms, 4),
            "fixed_ms": round(1e3 * self.fixed_s, 4),
            "launches": [
                {"label": t.label, "ms": round(1e3 * t.seconds, 4), "bound": t.bound}
                for t in self.launches
            ],
        }


# -- one launch ---------------------------------------------------------------------------
def _ends(fifo: ObjectFifo) -> list[ObjectFifoHandle]:
    return [h for h in (fifo.producer, *fifo.consumers) if h is not None]


def _released(worker: Worker) -> Counter:
    """Objects each of the worker's handles releases over the launch."""
    counts: Counter = Counter()
    for node, repeat in iron_record.walk(worker.body):
        if isinstance(node, Release):
            counts[id(node.handle)] += node.count * repeat
    return counts


class _Traffic:
    """Bytes through every fifo of a program, from its workers' releases, the runtime
    sequence's transfers, or through memory-tile links from the fifos they join/split."""

    def __init__(self, program: Program) -> None:
        self.released: Counter = Counter()
        for worker in program.workers:
            self.released.update(_released(worker))
        self.transferred: Counter = Counter()
        for transfer in program.runtime.transfers():
            nbytes = transfer.tap.length * transfer.host.dtype.itemsize
            self.transferred[id(transfer.handle)] += nbytes
        self._memo: dict[int, int] = {}

    def handle_bytes(self, handle: ObjectFifoHandle) -> int:
        """Bytes that pass through this end of its fifo."""
        if isinstance(handle.endpoint, iron_record.Runtime):
            return self.transferred[id(handle)]
        return self.fifo_bytes(handle.fifo)

    def fifo_bytes(self, fifo: ObjectFifo) -> int:
        if id(fifo) not in self._memo:
            self._memo[id(fifo)] = self._count(fifo)
        return self._memo[id(fifo)]

    def _count(self, fifo: ObjectFifo) -> int:
        for handle in _ends(fifo):
            if isinstance(handle.endpoint, Worker):
                return self.released[id(handle)] * fifo.nbytes
        for handle in _ends(fifo):
            if isinstance(handle.endpoint, iron_record.Runtime):
                return self.transferred[id(handle)]
        link = fifo.producer.endpoint
        if link.kind == "join":
            return sum(self.fifo_bytes(h.fifo) for h in link.inputs)
        source = link.inputs[0].fifo  # split or forward: this output's share, repeated
        share = self.fifo_bytes(source)  # a resizing forward moves all of it
        if not link.resizes:
            share = share * fifo.size // source.size
        return share * (fifo.repeat_count or 1)


def _channel_bytes(placement: Placement, traffic: _Traffic) -> Counter:
    """Bytes per DMA channel, {(tile, direction, channel): bytes}, from the placement's
    channel of every fifo end (shared-memory fifos use none)."""
    channels: Counter = Counter()
    for handle, end in placement.endpoints.items():
        if end.channel is None:
            continue
        direction = "mm2s" if handle.is_prod else "s2mm"
        channel = end.channel % CHANNELS[end.tile.kind]  # past the count: the rules refuse
        channels[(end.tile, direction, channel)] += traffic.handle_bytes(handle)
    return channels


def contiguous_run(tap: iron_record.TensorAccessPattern) -> int:
    """Elements of the pattern's longest contiguous run: its innermost dimensions while
    each one's stride is the run so far."""
    run = 1
    for size, stride in reversed(list(zip(tap.sizes, tap.strides, strict=True))):
        if size == 1:
            continue
        if stride != run:
            break
        run *= size
    return run


def transfer_seconds(tap: iron_record.TensorAccessPattern, itemsize: int) -> float:
    """A shim channel moving the pattern: per contiguous run, one burst overhead per
    SHIM_MAX_BURST_BYTES started, and the bytes at the stream rate."""
    run = contiguous_run(tap)
    run_bytes, runs = run * itemsize, tap.length // run
    bursts = -(-run_bytes // SHIM_MAX_BURST_BYTES)
    return runs * (bursts * SHIM_BURST_OVERHEAD_S + run_bytes / STREAM_BYTES_PER_S)


def _shim_seconds(program: Program, placement: Placement) -> Counter:
    """Busy time per shim DMA channel, {(tile, direction, channel): s}, from the
    runtime sequence's transfers priced by their bursts."""
    seconds: Counter = Counter()
    for transfer in program.runtime.transfers():
        end = placement.endpoints.get(transfer.handle)
        if end is None or end.channel is None:  # unplaced: the rules refuse it
            continue
        direction = "mm2s" if transfer.handle.is_prod else "s2mm"
        channel = end.channel % CHANNELS[end.tile.kind]
        seconds[(end.tile, direction, channel)] += transfer_seconds(
            transfer.tap, transfer.host.dtype.itemsize
        )
    return seconds


def configure_bytes(program: Program) -> int:
    """What configuring the array for the program writes: each core's program
    (CORE_PROGRAM_BYTES) and the initial values of its buffers."""
    initial = sum(b.nbytes for b in program.buffers if b.initial_value is not None)
    return len(program.workers) * CORE_PROGRAM_BYTES + initial


def _tile_name(tile: TileId) -> str:
    kind = {TileKind.CORE: "core", TileKind.MEM: "memtile", TileKind.SHIM: "shim"}[tile.kind]
    return f"{kind}({tile.col},{tile.row})"


def _core_seconds(worker: Worker, call_cycles: CallCycles, placement: Placement) -> float:
    """The worker's calls in order, each at least as long as the stream delivering the
    objects it acquires anew per call (its step's DMA block)."""
    acquired: Counter = Counter()
    for node, repeat in iron_record.walk(worker.body):
        if isinstance(node, Acquire):
            acquired[id(node.handle)] += node.count * repeat
    cycles = 0.0
    for node, repeat in iron_record.walk(worker.body):
        if not isinstance(node, Call):
            continue
        streamed = sum(
            arg.handle.fifo.nbytes
            for arg in node.args
            if isinstance(arg, Element)
            and not arg.handle.is_prod
            and acquired[id(arg.handle)] >= repeat
            and _channel(placement, arg.handle) is not None
        )
        block = streamed / STREAM_BYTES_PER_S * CLOCK_HZ
        cost = call_cycles(node)
        work = max(cost.cycles + CALL_OVERHEAD_CYCLES, block)
        idle = max(CALL_OVERHEAD_CYCLES, block)
        cycles += repeat * ((1 - cost.idle_share) * work + cost.idle_share * idle)
    return cycles / CLOCK_HZ


def _arrival_s(fifo: ObjectFifo, objects: int) -> float:
    """How long the first `objects` objects of a fifo take to reach its consumer: their
    bytes over the hop into it (a shim channel from DDR at its 512-B-burst rate: a
    transfer in shorter runs is slower, so its first object is priced a little low
    there; a stream from a memory tile), after the whole first object of each fifo the
    memory tile makes them from."""
    producer = fifo.producer.endpoint if fifo.producer is not None else None
    nbytes = objects * fifo.nbytes
    if isinstance(producer, iron_record.Runtime):
        return nbytes / SHIM_CHANNEL_BYTES_PER_S
    if isinstance(producer, iron_record.Link):
        upstream = max(_arrival_s(h.fifo, 1) for h in producer.inputs)
        return upstream + nbytes / STREAM_BYTES_PER_S
    return 0.0  # another core's output: that core's own fill and work come first


def _departure_s(fifo: ObjectFifo) -> float:
    """How long one object of a fifo takes from its producer to DDR: over the hop out,
    then as part of the object of each fifo a memory tile joins it into."""
    ends = [h.endpoint for h in fifo.consumers if h is not None]
    if any(isinstance(end, iron_record.Runtime) for end in ends):
        return fifo.nbytes / SHIM_CHANNEL_BYTES_PER_S
    links = [end for end in ends if isinstance(end, iron_record.Link)]
    if not links:
        return 0.0  # into another core: its work, not this launch's tail
    onward = max(_departure_s(h.fifo) for link in links for h in link.outputs)
    return fifo.nbytes / STREAM_BYTES_PER_S + onward


def _fill_s(worker: Worker, placement: Placement) -> float:
    """Until the worker's first call has its objects: those it acquires before it, on
    fifos a DMA brings (the longest path; the others wait at the same time)."""
    waits = [0.0]
    for node, _ in iron_record.walk(worker.body):
        if isinstance(node, Call):
            break
        streamed = isinstance(node, Acquire) and not node.handle.is_prod
        if streamed and _channel(placement, node.handle) is not None:
            waits.append(_arrival_s(node.handle.fifo, node.count))
    return max(waits)


def _drain_s(worker: Worker, placement: Placement) -> float:
    """The worker's last output object, from its DMA to DDR (its slowest output)."""
    outputs = {
        id(node.handle): node.handle.fifo
        for node, _ in iron_record.walk(worker.body)
        if isinstance(node, Acquire) and node.handle.is_prod
        and _channel(placement, node.handle) is not None
    }  # fmt: skip
    return max((_departure_s(fifo) for fifo in outputs.values()), default=0.0)


def _channel(placement: Placement, handle: ObjectFifoHandle) -> int | None:
    end = placement.endpoints.get(handle)
    return None if end is None else end.channel


def launch_time(
    program: Program,
    call_cycles: CallCycles,
    label: str = "",
    placement: Placement | None = None,
) -> LaunchTime:
    """The busy time of every resource of one launch, placed as mlir-aie would place it
    (aiebuild/array/placement.py; `placement` when the caller has it already).
    `call_cycles` prices one call of a kernel entry point."""
    placement, traffic = placement or place(program), _Traffic(program)
    busy: dict[str, float] = {}
    for worker, tile in placement.workers.items():
        busy[_tile_name(tile)] = _core_seconds(worker, call_cycles, placement)
    for (tile, direction, channel), nbytes in _channel_bytes(placement, traffic).items():
        if tile.kind is not TileKind.SHIM:
            busy[f"{_tile_name(tile)} {direction}{channel}"] = nbytes / STREAM_BYTES_PER_S
    for (tile, direction, channel), seconds in _shim_seconds(program, placement).items():
        busy[f"{_tile_name(tile)} {direction}{channel}"] = seconds
    ddr_columns: Counter = Counter()
    for transfer in program.runtime.transfers():
        nbytes = transfer.tap.length * transfer.host.dtype.itemsize
        ddr_columns[placement.tile(transfer.handle).col] += nbytes
    for column, nbytes in ddr_columns.items():
        busy[f"ddr column {column}"] = nbytes / COLUMN_DDR_BYTES_PER_S
    busy["ddr"] = sum(ddr_columns.values()) / ARRAY_DDR_BYTES_PER_S
    workers = list(placement.workers)
    fill = max((_fill_s(worker, placement) for worker in workers), default=0.0)
    drain = max((_drain_s(worker, placement) for worker in workers), default=0.0)
    return LaunchTime(label, busy, configure_bytes(program), fill, drain)
