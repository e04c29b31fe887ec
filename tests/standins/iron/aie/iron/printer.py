"""The stand-in's printer (tests only): a recorded program (aiebuild.array.iron_record) as
the MLIR text IRON 1.4 prints for it (mlir-aie v1.4.0, db06374). What it follows:

- program.py `resolve_program`: `aie.device(npu2)` without the default name `@main`;
  the tiles first (workers', then each fifo's endpoints, fifos sorted by name), one
  `aie.logical_tile<Kind>(col, row)` per Tile object, `?` where the placer decides;
  then the ObjectFifos (sorted by name) and their memory-tile links, then per worker
  its buffers and kernel declarations (in argument order), then the cores, then the
  runtime sequence; no `load_pdi` (only under the full-ELF compile arg);
- worker.py: the core body inside `scf.for` to `sys.maxsize`; controlflow `range_`
  loops as `scf.for` with their constants just before them;
- runtime.py: `aie.runtime_sequence(` without the default name; per transfer
  `shim_dma_single_bd_task` (dialects/aiex.py): sizes left-padded to 4 dimensions,
  `len` = product of the inner three, `repeat_count` = sizes[0] - 1; a finished group
  awaits its waited tasks, then frees all of them;
- MLIR's value names: named results (tiles, buffers, constants, placed cores) made
  unique with `_<n>` from one counter per region, numbered results and loop arguments
  counted on in nested regions from where their parent region ended (AsmPrinter
  SSANameState; `aie.device` is IsolatedFromAbove, so numbering restarts there).

It raises NotImplementedError for what it cannot print faithfully, rather than
printing something IRON would not."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from aiebuild.array import iron_record as m

_ELEMENT = {"bfloat16": "bf16", "float32": "f32", "int32": "i32", "int8": "i8", "uint8": "ui8"}
_TILE_KIND = {m.Worker: ("CoreTile", "core"), m.Link: ("MemTile", "mem")}
_SHIM = ("ShimNOCTile", "shim_noc")


def memref(shape: tuple[int, ...], dtype: np.dtype) -> str:
    dims = "x".join(map(str, shape))
    return f"memref<{dims}x{_ELEMENT[np.dtype(dtype).name]}>"


def print_program(program: m.Program) -> str:
    return _Printer(program).text()


# -- MLIR value names -------------------------------------------------------------------


@dataclass
class _Scope:
    """One region's names: named results made unique, numbered results and loop
    arguments counted on from where the parent region ended."""

    parent: _Scope | None = None
    used: set[str] = field(default_factory=set)
    value: int = 0
    argument: int = 0
    conflict: int = 0

    def child(self) -> _Scope:
        return _Scope(self, set(), self.value, self.argument, self.conflict)

    def _taken(self, name: str) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.used:
                return True
            scope = scope.parent
        return False

    def named(self, base: str) -> str:
        name = base
        while self._taken(name):
            name, self.conflict = f"{base}_{self.conflict}", self.conflict + 1
        self.used.add(name)
        return f"%{name}"

    def numbered(self) -> str:
        self.value += 1
        return f"%{self.value - 1}"

    def loop_argument(self) -> str:
        self.argument += 1
        return f"%arg{self.argument - 1}"


# -- the printer --------------------------------------------------------------------------


class _Printer:
    def __init__(self, program: m.Program) -> None:
        self.program = program
        self.fifos = _fifos(program)
        self.scope = _Scope()
        self.tiles: dict[int, str] = {}  # id(Tile) -> its value
        self.own_shims: dict[int, m.Tile] = {}  # id(handle) -> the shim IRON makes for it

    def text(self) -> str:
        device = [f"  aie.device({self.program.device.name}) {{"]
        body = [*self._tile_lines(), *self._fifo_lines(), *self._declarations()]
        cores = [self._core_head(worker) for worker in self.program.workers]
        # Every nested region starts from the device region's final counters.
        for worker, head in zip(self.program.workers, cores, strict=True):
            core = _Core(worker, self.scope.child()).lines()
            body += [head, *_indent(core, 6), "      aie.end", "    }"]
        body += _Sequence(self.program.runtime, self.scope.child()).lines()
        return "\n".join(["module {", *device, *body, "  }", "}"]) + "\n"

    # tiles: workers', then fifo endpoints by fifo name; one op per Tile object
    def _tile_lines(self) -> list[str]:
        lines = []
        for owner, tile in self._tile_owners():
            if id(tile) in self.tiles:
                continue
            kind, base = _TILE_KIND.get(type(owner), _SHIM)
            name = self.scope.named(f"logical_{base}")
            self.tiles[id(tile)] = name
            where = ", ".join("?" if v is None else str(v) for v in (tile.col, tile.row))
            lines.append(f"    {name} = aie.logical_tile<{kind}>({where})")
        return lines

    def _tile_owners(self):
        for worker in self.program.workers:
            yield worker, worker.tile
        for fifo in self.fifos:
            for handle in _ends(fifo):
                yield handle.endpoint, self._tile_of(handle)

    def _tile_of(self, handle: m.ObjectFifoHandle) -> m.Tile:
        endpoint = handle.endpoint
        if isinstance(endpoint, m.Worker | m.Link):
            return endpoint.tile
        if handle.shim_tile is not None:
            return handle.shim_tile
        # IRON gives each runtime endpoint that names no tile a shim tile of its own.
        return self.own_shims.setdefault(id(handle), m.Tile())

    def _fifo_lines(self) -> list[str]:
        """The fifos by name; each one's links right after it, once their other fifos
        are out (objectfifo.py ObjectFifo.resolve, ObjectFifoLink.resolve)."""
        lines: list[str] = []
        done: set[int] = set()

        def fifo(f: m.ObjectFifo) -> None:
            if id(f) in done:
                return
            done.add(id(f))
            lines.append(f"    {self._fifo(f)}")
            for handle in _ends(f):
                if isinstance(handle.endpoint, m.Link):
                    link(handle.endpoint)

        def link(k: m.Link) -> None:
            if id(k) in done:
                return
            done.add(id(k))
            for handle in (*k.inputs, *k.outputs):
                fifo(handle.fifo)
            lines.append(f"    {_link(k)}")

        for f in self.fifos:
            fifo(f)
        return lines

    def _fifo(self, fifo: m.ObjectFifo) -> str:
        producer, consumers = fifo.producer, fifo.consumers
        to_stream = _dims("dimensionsToStream", fifo.dims_to_stream)
        ends = ", ".join(
            self.tiles[id(self._tile_of(c))] + _dims("dimensionsFromStream", c.dims_from_stream)
            for c in consumers
        )
        depths = [producer.depth, *(c.depth for c in consumers)]
        depth = (
            f"{depths[0]} : i32"
            if len(set(depths)) == 1
            else f"[{', '.join(f'{d} : i32' for d in depths)}]"
        )
        repeat = f" {{repeat_count = {fifo.repeat_count} : i32}}" if fifo.repeat_count else ""
        return (
            f"aie.objectfifo @{fifo.name}({self.tiles[id(self._tile_of(producer))]}{to_stream}, "
            f"{{{ends}}}, {depth}){repeat} : !aie.objectfifo<{memref(fifo.shape, fifo.dtype)}>"
        )

    def _declarations(self) -> list[str]:
        lines, seen = [], set()
        for worker in self.program.workers:
            for arg in worker.fn_args:
                if id(arg) in seen:
                    continue
                seen.add(id(arg))
                if isinstance(arg, m.Buffer):
                    lines.append(f"    {self._buffer(arg, worker)}")
                elif isinstance(arg, m.Kernel):
                    types = ", ".join(_type(t) for t in arg.arg_types)
                    lines.append(
                        f"    func.func private @{arg.symbol}({types}) "
                        f'attributes {{link_with = "{arg.object}"}}'
                    )
        return lines

    def _buffer(self, buffer: m.Buffer, worker: m.Worker) -> str:
        name = self.scope.named(buffer.name)
        tile = self.tiles[id(buffer.tile or worker.tile)]
        text = (
            f'{name} = aie.buffer({tile}) {{sym_name = "{buffer.name}"}} : '
            f"{memref(buffer.shape, buffer.dtype)}"
        )
        if buffer.initial_value is not None:
            text += f" = dense<{_dense(np.asarray(buffer.initial_value, buffer.dtype))}>"
        return text

    def _core_head(self, worker: m.Worker) -> str:
        tile = worker.tile
        placed = tile.col is not None and tile.row is not None
        name = self.scope.named(f"core_{tile.col}_{tile.row}") if placed else self.scope.numbered()
        if worker.stack_size:
            raise NotImplementedError("the stand-in does not print a core's stack_size")
        return f"    {name} = aie.core({self.tiles[id(tile)]}) {{"


class _Core:
    """One worker's body, inside the while(true) loop IRON wraps it in."""

    def __init__(self, worker: m.Worker, scope: _Scope) -> None:
        self.worker, self.scope = worker, scope
        self.values: dict[int, list[str]] = {}  # id(handle) -> its acquired elements

    def lines(self) -> list[str]:
        return self._region([m.Loop(sys.maxsize, self.worker.body)], self.scope)

    def _region(self, body: list, scope: _Scope) -> list[str]:
        """A region's ops; its loops' regions are numbered after it ends."""
        lines: list = []
        loops = []
        for node in body:
            if isinstance(node, m.Loop):
                bounds = [scope.named(f"c{v}") for v in (0, node.count, 1)]
                lines += [
                    f"{name} = arith.constant {value} : index"
                    for name, value in zip(bounds, (0, node.count, 1), strict=True)
                ]
                loops.append((len(lines), node, bounds))
                lines.append(None)  # the scf.for, filled in below
            elif isinstance(node, m.Acquire):
                lines += self._acquire(node, scope)
            elif isinstance(node, m.Release):
                port = "Produce" if node.handle.is_prod else "Consume"
                lines.append(f"aie.objectfifo.release @{node.handle.name}({port}, {node.count})")
            elif isinstance(node, m.Call):
                lines += self._call(node, scope)
            else:
                raise NotImplementedError(f"the stand-in does not print {node!r} in a core")
        for slot, loop, (start, stop, step) in loops:
            inner = scope.child()
            argument = inner.loop_argument()
            head = f"scf.for {argument} = {start} to {stop} step {step} {{"
            lines[slot] = [head, *_indent(self._region(loop.body, inner), 2), "}"]
        return [line for entry in lines for line in (entry if isinstance(entry, list) else [entry])]

    def _acquire(self, node: m.Acquire, scope: _Scope) -> list[str]:
        fifo, port = node.handle.fifo, "Produce" if node.handle.is_prod else "Consume"
        element = memref(fifo.shape, fifo.dtype)
        view = f"!aie.objectfifosubview<{element}>"
        acquired = scope.numbered()
        lines = [f"{acquired} = aie.objectfifo.acquire @{fifo.name}({port}, {node.count}) : {view}"]
        values = []
        for index in range(node.count):
            value = scope.numbered()
            values.append(value)
            lines.append(
                f"{value} = aie.objectfifo.subview.access {acquired}[{index}] : {view} -> {element}"
            )
        self.values[id(node.handle)] = values
        return lines

    def _call(self, node: m.Call, scope: _Scope) -> list[str]:
        lines, operands = [], []
        for arg, expected in zip(node.args, node.kernel.arg_types, strict=True):
            if isinstance(arg, int | np.integer):
                value = scope.named(f"c{int(arg)}_i32")
                lines.append(f"{value} = arith.constant {int(arg)} : i32")
            elif isinstance(arg, m.Buffer):
                value = f"%{arg.name}"
            else:
                value = self.values[id(arg.handle)][arg.index]
                given = memref(arg.handle.fifo.shape, arg.handle.fifo.dtype)
                if given != _type(expected):  # kernel.py: an N-D element into a 1-D parameter
                    flat = scope.numbered()
                    dims = list(range(len(arg.handle.fifo.shape)))
                    lines.append(
                        f"{flat} = memref.collapse_shape {value} [{dims}] : {given} into "
                        f"{_type(expected)}"
                    )
                    value = flat
            operands.append(value)
        types = ", ".join(_type(t) for t in node.kernel.arg_types)
        lines.append(f"func.call @{node.kernel.symbol}({', '.join(operands)}) : ({types}) -> ()")
        return lines


class _Sequence:
    """The runtime sequence: its host arguments, transfers and group finishes."""

    def __init__(self, runtime: m.Runtime, scope: _Scope) -> None:
        self.runtime, self.scope = runtime, scope
        self.tasks: dict[int, str] = {}  # id(Transfer) -> its task value
        self.open: list[m.Transfer] = []

    def lines(self) -> list[str]:
        params = ", ".join(
            f"%arg{h.index}: {memref(h.shape, h.dtype)}" for h in self.runtime.host_args
        )
        self.scope.argument = len(self.runtime.host_args)
        body = []
        for node in self.runtime.body:
            if isinstance(node, m.Transfer):
                body += self._transfer(node)
            elif isinstance(node, m.Finish):
                body += self._finish(node.group)
            else:
                raise NotImplementedError(f"the stand-in does not print {node!r} in a sequence")
        return [f"    aie.runtime_sequence({params}) {{", *_indent(body, 6), "    }"]

    def _transfer(self, node: m.Transfer) -> list[str]:
        tap = node.tap
        sizes, strides = list(tap.sizes), list(tap.strides)
        if len(sizes) > 4:
            raise ValueError(f"shim DMA BD supports at most 4 dimensions, got {len(sizes)}")
        sizes, strides = [1] * (4 - len(sizes)) + sizes, [0] * (4 - len(strides)) + strides
        attrs = ["issue_token = true"] if node.wait else []
        if sizes[0] > 1:
            attrs.append(f"repeat_count = {sizes[0] - 1} : i32")
        task = self.scope.numbered()
        self.tasks[id(node)] = task
        self.open.append(node)
        host = node.host
        bd = (
            f"aie.dma_bd(%arg{host.index} : {memref(host.shape, host.dtype)} offset = "
            f"{tap.offset} len = {math.prod(sizes[-3:])} sizes = {_list(sizes)} strides = "
            f"{_list(strides)})"
        )
        return [
            f"{task} = aiex.dma_configure_task_for @{node.handle.name} {{",
            f"  {bd}",
            "  aie.end",
            "}" + (f" {{{', '.join(attrs)}}}" if attrs else ""),
            f"aiex.dma_start_task({task})",
        ]

    def _finish(self, group: m.TaskGroup) -> list[str]:
        done = [t for t in self.open if t.group is group]
        self.open = [t for t in self.open if t.group is not group]
        waits = [f"aiex.dma_await_task({self.tasks[id(t)]})" for t in done if t.wait]
        return waits + [f"aiex.dma_free_task({self.tasks[id(t)]})" for t in done]


# -- helpers --------------------------------------------------------------------------------


def _fifos(program: m.Program) -> list[m.ObjectFifo]:
    """Every fifo the program reaches (workers, runtime, links), sorted by name as
    program.py resolves them; a name used twice cannot be printed."""
    found: dict[int, m.ObjectFifo] = {}
    pending = [*(h.fifo for w in program.workers for h in w.handles)]
    pending += [a.fifo for a in program.runtime.fn_args if isinstance(a, m.ObjectFifoHandle)]
    while pending:
        fifo = pending.pop()
        if id(fifo) in found:
            continue
        found[id(fifo)] = fifo
        for handle in _ends(fifo):
            if isinstance(handle.endpoint, m.Link):
                pending += [h.fifo for h in (*handle.endpoint.inputs, *handle.endpoint.outputs)]
    names = [f.name for f in found.values()]
    if len(set(names)) != len(names):
        raise ValueError(f"ObjectFifo names must be unique in a program: {sorted(names)}")
    return sorted(found.values(), key=lambda f: f.name)


def _ends(fifo: m.ObjectFifo) -> list[m.ObjectFifoHandle]:
    if fifo.producer is None or not fifo.consumers:
        raise ValueError(f"ObjectFifo {fifo.name} needs a producer and a consumer")
    for handle in (fifo.producer, *fifo.consumers):
        if handle.endpoint is None:
            raise ValueError(f"{handle} is used by no worker, link or runtime")
    return [fifo.producer, *fifo.consumers]


def _link(link: m.Link) -> str:
    sources = ", ".join(f"@{h.name}" for h in link.inputs)
    targets = ", ".join(f"@{h.name}" for h in link.outputs)
    offsets = _list(link.offsets)  # a forward is a split at [0] (objectfifo.py forward)
    placed = f"{offsets} []" if link.kind == "join" else f"[] {offsets}"
    return f"aie.objectfifo.link [{sources}] -> [{targets}]({placed})"


def _dims(keyword: str, dims: list[tuple[int, int]]) -> str:
    if not dims:
        return ""
    pattern = ", ".join(f"<size = {size}, stride = {stride}>" for size, stride in dims)
    return f" {keyword} [{pattern}]"


def _type(t) -> str:
    if t in (int, np.int32):
        return "i32"
    return memref(*m.element_type(t))


def _dense(values: np.ndarray) -> str:
    """MLIR's dense literal: one value for a splat, else nested lists."""
    flat = values.reshape(-1)
    if flat.size and (flat == flat[0]).all():
        return _scalar(flat[0])
    return _nested(values)


def _nested(values: np.ndarray) -> str:
    if values.ndim == 0:
        return _scalar(values[()])
    return "[" + ", ".join(_nested(v) for v in values) + "]"


def _scalar(value) -> str:
    if np.issubdtype(np.asarray(value).dtype, np.floating):
        return f"{float(value):.6e}"
    return str(int(value))


def _list(values) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def _indent(lines: list[str], width: int) -> list[str]:
    return [" " * width + line for line in lines]
