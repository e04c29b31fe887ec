"""Where a recorded IRON program sits on the NPU2 array, as mlir-aie 1.4 would put it.

`place(program) -> Placement` gives every Worker a core tile, every memory-tile Link a
memory tile and every runtime-driven fifo end (a `fill` / `drain` handle) a shim tile,
and gives each fifo end that needs a DMA its channel on its tile. The rules check
(`aiebuild/array/rules.py`), the dataflow simulator and the npu2 time model all read this one
placement.

What is modelled (mlir-aie v1.4.0 = db06374):
- Tiles given as `Tile(col, row)` stay where they are, even outside the array or on a
  tile of the wrong kind: the rules check refuses them by name, so placement never does.
- The sequential placer (lib/Dialect/AIE/Transforms/AIEPlacer.cpp, the default of
  `--aie-place-tiles`): logical tiles in IRON's resolve order (python/iron/program.py:
  the workers, then per fifo, sorted by name, its endpoints' tiles); pinned ones first,
  then those pinned in one coordinate, then the rest; an unpinned Worker takes the
  first free core in column-major order from (0, 2). Its neighbour steering for
  core-to-core fifos beyond a core's DMA budget is not modelled (no design of ours
  needs it). When the 32 cores are taken, further Workers continue the column-major
  walk into columns past the array, so the rules check reports the column.
- Memory tiles and shim tiles not pinned in both coordinates go, heaviest channel
  demand first, to the column with the least routing cost to the cores they feed or
  drain (through one memory tile for a shim: `computeCentroidColumn`), then to the
  tile of that kind with spare DMA channels minimising (distance, channels in use,
  col, row) (`findTileWithCapacity`; logical tiles merge onto one physical tile,
  `merge-logical-tiles` defaults to true). A column pin only sets the target column,
  as upstream. Each runtime-driven fifo end is its own logical shim tile
  (python/iron/runtime/endpoint.py: "shim tiles are never shared between endpoints"),
  so the unpinned ends of one launch spread over shim tiles by DMA capacity. When no
  tile has capacity left, the end stays in its target column and the rules check
  reports the channel count there.
- A fifo needs no DMA when it joins two neighbouring cores that share memory, with one
  consumer, no dimensions and no repeat count (AIEObjectFifoStatefulTransform.cpp
  `requiresDMAs`, `isSharedMemory`; AIE2 memory affinity: same tile, same row one
  column apart, same column one row apart). Its buffers then live on the producer's
  tile, or on the consumer's when only the producer can reach it (`share_direction`).
- Every other fifo end takes the next free DMA channel of its direction on its tile
  (MM2S for a producer end, S2MM for a consumer end), fifos in name order, producer
  before consumers (the stateful transform's first-free assignment). Channel numbers
  past the tile's channel count are kept, so the rules check can name them.
"""

from __future__ import annotations

import enum
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from aiebuild.array import geometry
from aiebuild.array.iron_record import (
    NPU2,
    Link,
    ObjectFifo,
    ObjectFifoHandle,
    Program,
    Runtime,
    Worker,
)

# AIETargetModel.h (db06374): `if (row == 0) return AIETileType::ShimNOCTile;`; on
# NPU2 one row of memory tiles above the shims, the cores above them.
SHIM_ROW, MEM_ROW = geometry.SHIM_ROW, geometry.MEM_ROW


class TileKind(enum.Enum):
    SHIM = "shim tile"
    MEM = "memory tile"
    CORE = "core"


# DMA channels per direction (S2MM in, MM2S out) of each tile kind:
# lib/Dialect/AIE/IR/AIETargetModel.cpp (db06374), getNumDestConnections /
# getNumSourceConnections, `case WireBundle::DMA`: core 2, memory tile 6, shim 2.
DMA_CHANNELS = {TileKind.CORE: 2, TileKind.MEM: 6, TileKind.SHIM: 2}


@dataclass(frozen=True, order=True)
class TileId:
    """A physical tile; coordinates outside NPU2 are kept for the rules check to name."""

    col: int
    row: int

    @property
    def kind(self) -> TileKind:
        if self.row == SHIM_ROW:
            return TileKind.SHIM
        return TileKind.MEM if self.row == MEM_ROW else TileKind.CORE

    def __str__(self) -> str:
        return f"({self.col}, {self.row})"


class Direction(enum.Enum):
    IN = "input"  # S2MM: the stream writes this tile's memory (a consumer end)
    OUT = "output"  # MM2S: the DMA reads this tile's memory (a producer end)


@dataclass(frozen=True)
class Endpoint:
    """One fifo end on its tile, with its DMA channel (None: shared memory, no DMA)."""

    handle: ObjectFifoHandle
    tile: TileId
    channel: int | None

    @property
    def fifo(self) -> ObjectFifo:
        return self.handle.fifo

    @property
    def direction(self) -> Direction:
        return Direction.OUT if self.handle.is_prod else Direction.IN

    @property
    def uses_dma(self) -> bool:
        return self.channel is not None

    def __str__(self) -> str:
        end = "producer" if self.handle.is_prod else "consumer"
        return f"{self.fifo.name} {end}"


@dataclass
class Placement:
    """Tiles of a program's Workers, Links and shim ends, and its fifo endpoints."""

    workers: dict[Worker, TileId]
    links: dict[Link, TileId]
    shims: dict[ObjectFifoHandle, TileId]  # runtime-driven fifo ends
    endpoints: dict[ObjectFifoHandle, Endpoint] = field(default_factory=dict)
    buffer_tiles: dict[ObjectFifo, TileId] = field(default_factory=dict)  # shared-memory fifos

    def tile(self, handle: ObjectFifoHandle) -> TileId:
        """The tile of a fifo end's endpoint (Worker, Link or shim)."""
        end = handle.endpoint
        if isinstance(end, Worker):
            return self.workers[end]
        if isinstance(end, Link):
            return self.links[end]
        return self.shims[handle]

    def at(self, tile: TileId) -> list[Endpoint]:
        """The fifo endpoints on one tile, in channel-assignment order."""
        return [e for e in self.endpoints.values() if e.tile == tile]

    def tiles(self) -> list[TileId]:
        """Every tile the program uses, sorted."""
        used = {*self.workers.values(), *self.links.values(), *self.shims.values()}
        return sorted(used)

    def shares_memory(self, fifo: ObjectFifo) -> bool:
        return fifo in self.buffer_tiles


def place(program: Program) -> Placement:
    """The program's placement, as mlir-aie 1.4's sequential placer and ObjectFifo
    lowering would make it (see the module docstring for what is modelled)."""
    placer = _Placer(program)
    placer.place_cores()
    placer.place_pinned_others()
    placer.place_unpinned_others()
    placement = Placement(placer.workers, placer.links, placer.shims)
    _assign_channels(program, placement)
    return placement


# --- the sequential placer -------------------------------------------------------------

_Logical = Worker | Link | ObjectFifoHandle  # a logical tile: a shim end is its handle


def _requested(logical: _Logical):
    if isinstance(logical, ObjectFifoHandle):
        return logical.shim_tile
    return logical.tile


class _Placer:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.order = _logical_tiles(program)
        self.demand = _channel_demand(program)
        self.used: dict[TileId, list[int]] = defaultdict(lambda: [0, 0])  # [in, out]
        self.free_cores = list(_core_walk(range(NPU2.columns)))
        self.taken_cores: set[TileId] = set()
        self.workers: dict[Worker, TileId] = {}
        self.links: dict[Link, TileId] = {}
        self.shims: dict[ObjectFifoHandle, TileId] = {}

    def record(self, logical: _Logical, tile: TileId) -> None:
        if isinstance(logical, Worker):
            self.workers[logical] = tile
            self.taken_cores.add(tile)
        elif isinstance(logical, Link):
            self.links[logical] = tile
        else:
            self.shims[logical] = tile
        inputs, outputs = self.demand[logical]
        self.used[tile][0] += inputs
        self.used[tile][1] += outputs

    def place_cores(self) -> None:
        """Pinned, then half-pinned, then free Workers, each on the first free core of
        the column-major walk that matches its pin."""
        workers = [w for w in self.order if isinstance(w, Worker)]
        for worker in sorted(workers, key=_pin_rank):
            pin = worker.tile
            if pin.col is not None and pin.row is not None:
                self.record(worker, TileId(pin.col, pin.row))
                continue
            self.record(worker, self._first_free_core(pin.col, pin.row))

    def _first_free_core(self, col: int | None, row: int | None) -> TileId:
        beyond = _core_walk(itertools.count(NPU2.columns))  # past the array: refused later
        for tile in itertools.chain(self.free_cores, beyond):
            if tile in self.taken_cores:
                continue
            if (col is None or tile.col == col) and (row is None or tile.row == row):
                return tile
        raise AssertionError("the column-major walk is endless")

    def place_pinned_others(self) -> None:
        for logical in self.order:
            pin = _requested(logical)
            if isinstance(logical, Worker) or pin is None:
                continue
            if pin.col is not None and pin.row is not None:
                self.record(logical, TileId(pin.col, pin.row))

    def place_unpinned_others(self) -> None:
        pending = [
            logical
            for logical in self.order
            if not isinstance(logical, Worker) and logical not in self._placed()
        ]
        pending.sort(key=lambda logical: -sum(self.demand[logical]))  # stable
        for logical in pending:
            pin = _requested(logical)
            column = pin.col if pin is not None and pin.col is not None else self._centroid(logical)
            self.record(logical, self._tile_with_capacity(logical, column))

    def _placed(self) -> set:
        return {*self.workers, *self.links, *self.shims}

    def _tile_with_capacity(self, logical: _Logical, column: int) -> TileId:
        row = MEM_ROW if isinstance(logical, Link) else SHIM_ROW
        inputs, outputs = self.demand[logical]
        limit = DMA_CHANNELS[TileId(0, row).kind]
        candidates = [
            TileId(col, row)
            for col in range(NPU2.columns)
            if self.used[TileId(col, row)][0] + inputs <= limit
            and self.used[TileId(col, row)][1] + outputs <= limit
        ]
        if not candidates:  # the rules check reports the channels at the target column
            return TileId(column, row)
        return min(candidates, key=lambda t: (abs(t.col - column), sum(self.used[t]), t.col))

    def _centroid(self, logical: _Logical) -> int:
        """The column with the least routing cost to the cores this logical tile's
        fifos reach (directly, or through one other non-core logical tile)."""
        flows = [d for d in (self._core_columns(peers, logical) for peers in _flows(logical)) if d]
        if not flows:
            return 0
        every = [col for dests in flows for col in dests]
        mean = sum(every) / len(every)

        def cost(column: int) -> tuple[int, float]:
            total = 0
            for dests in flows:
                if len(dests) == 1:
                    total += abs(column - dests[0])
                else:
                    total += max(min(dests) - column, 0) + max(column - max(dests), 0)
            return total, abs(column - mean)

        return min(range(NPU2.columns), key=cost)

    def _core_columns(self, peers: list[_Logical], this: _Logical) -> list[int]:
        columns = []
        for peer in peers:
            if isinstance(peer, Worker):
                columns.append(self.workers[peer].col)
            elif peer is not this:
                columns += [
                    self.workers[p].col
                    for flow in _flows(peer)
                    for p in flow
                    if isinstance(p, Worker)
                ]
        return columns


def _core_walk(columns: Iterable[int]) -> Iterator[TileId]:
    """Core tiles column by column, bottom to top (AIEPlacer.cpp compTileCmp)."""
    for col in columns:
        for row in range(MEM_ROW + 1, NPU2.rows):
            yield TileId(col, row)


def _pin_rank(worker: Worker) -> int:
    return (worker.tile.col is None) + (worker.tile.row is None)


def _logical(handle: ObjectFifoHandle) -> _Logical:
    """The logical tile a fifo end sits on: its Worker, its Link, or (runtime) itself."""
    end = handle.endpoint
    return handle if isinstance(end, Runtime) else end


def _ends(fifo: ObjectFifo) -> list[ObjectFifoHandle]:
    return [fifo.producer, *fifo.consumers]


def _sorted_fifos(program: Program) -> list[ObjectFifo]:
    return sorted(program.fifos, key=lambda fifo: fifo.name)


def _logical_tiles(program: Program) -> list[_Logical]:
    """Logical tiles in IRON's resolve order: workers, then fifo endpoints by fifo name."""
    order: list[_Logical] = list(program.workers)
    for fifo in _sorted_fifos(program):
        for handle in _ends(fifo):
            logical = _logical(handle)
            if not any(logical is seen for seen in order):
                order.append(logical)
    return order


def _flows(logical: _Logical) -> list[list[_Logical]]:
    """Per fifo of this logical tile, the logical tiles at its other end(s)
    (AIEPlacer.cpp buildFlowMembership)."""
    flows = []
    for handle in _handles_of(logical):
        fifo = handle.fifo
        if handle.is_prod:
            flows.append([_logical(c) for c in fifo.consumers])
        else:
            flows.append([_logical(fifo.producer)])
    return flows


def _handles_of(logical: _Logical) -> list[ObjectFifoHandle]:
    if isinstance(logical, Worker):
        return logical.handles
    if isinstance(logical, Link):
        return [*logical.inputs, *logical.outputs]
    return [logical]


def _channel_demand(program: Program) -> dict[_Logical, tuple[int, int]]:
    """(input, output) DMA channels each logical tile needs, as the placer counts them
    (AIEPlacer.cpp buildChannelRequirements): core-to-core fifos count nothing, a link
    tile one channel per linked fifo."""
    demand: dict = defaultdict(lambda: (0, 0))
    for fifo in program.fifos:
        producer = _logical(fifo.producer)
        needs_dma = False
        for consumer in fifo.consumers:
            if isinstance(producer, Worker) and isinstance(consumer.endpoint, Worker):
                continue
            needs_dma = True
            if not isinstance(consumer.endpoint, Link):
                inputs, outputs = demand[_logical(consumer)]
                demand[_logical(consumer)] = (inputs + 1, outputs)
        if needs_dma and not isinstance(producer, Link):
            inputs, outputs = demand[producer]
            demand[producer] = (inputs, outputs + 1)
    for link in program.links:
        inputs, outputs = demand[link]
        demand[link] = (inputs + len(link.inputs), outputs + len(link.outputs))
    return demand


# --- fifo lowering: shared memory or DMA channels ---------------------------------------


def _assign_channels(program: Program, placement: Placement) -> None:
    next_channel: dict[tuple[TileId, bool], int] = defaultdict(int)
    for fifo in _sorted_fifos(program):
        shared = _shared_memory_tile(fifo, placement)
        if shared is not None:
            placement.buffer_tiles[fifo] = shared
        for handle in _ends(fifo):
            tile = placement.tile(handle)
            channel = None
            if shared is None:
                channel = next_channel[tile, handle.is_prod]
                next_channel[tile, handle.is_prod] += 1
            placement.endpoints[handle] = Endpoint(handle, tile, channel)


def _shared_memory_tile(fifo: ObjectFifo, placement: Placement) -> TileId | None:
    """The tile holding a fifo's buffers when it needs no DMA, else None."""
    if len(fifo.consumers) != 1 or fifo.dims_to_stream or fifo.repeat_count is not None:
        return None
    (consumer,) = fifo.consumers
    if consumer.dims_from_stream:
        return None
    if not (isinstance(fifo.producer.endpoint, Worker) and isinstance(consumer.endpoint, Worker)):
        return None
    producer_tile, consumer_tile = placement.tile(fifo.producer), placement.tile(consumer)
    producer_reaches = _memory_affine(producer_tile, consumer_tile)
    consumer_reaches = _memory_affine(consumer_tile, producer_tile)
    if producer_reaches and not consumer_reaches:  # share_direction 1
        return consumer_tile
    return producer_tile if (producer_reaches or consumer_reaches) else None


def _memory_affine(core: TileId, memory: TileId) -> bool:
    """Whether `core` reaches `memory`'s data memory (AIE2TargetModel::isLegalMemAffinity:
    its own, the one to its West, North or South)."""
    if core.col == memory.col:
        return abs(core.row - memory.row) <= 1
    return core.row == memory.row and memory.col == core.col - 1
