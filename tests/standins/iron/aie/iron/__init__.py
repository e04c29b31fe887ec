"""Stand-in `aie.iron` (tests only): records what a design declares and prints it as
MLIR shaped like IRON 1.4 output (one `aie.device(npu2) @main` with the kernel
declarations, fifos, buffers, the traced core body and a runtime sequence that
loads its own PDI, as IRON's does). It refuses, as the device would, more DMA
tasks live at once than a shim tile has buffer descriptors."""

import itertools
import typing

import numpy as np

SHIM_BDS = 16
_ELEMENTS = {"bfloat16": "bf16", "float32": "f32", "int32": "i32"}
_body: list[str] = []  # the text being traced (core body or runtime sequence)


def _current() -> list[str]:
    return _body


def mlir_type(t) -> str:
    if t in (int, np.int32):
        return "i32"
    dims, dtype = typing.get_args(t)
    (element,) = typing.get_args(dtype)
    return f"memref<{'x'.join(map(str, dims))}x{_ELEMENTS[np.dtype(element).name]}>"


class ObjectFifo:
    def __init__(self, obj_type, name, depth=2):
        self.type, self.name, self.depth = obj_type, name, depth

    def prod(self):
        return _Handle(self, "Produce")

    def cons(self):
        return _Handle(self, "Consume")


class _Handle:
    def __init__(self, fifo, port):
        self.fifo, self.port = fifo, port

    def acquire(self, count):
        _body.append(f"aie.objectfifo.acquire @{self.fifo.name}({self.port}, {count})")
        return _Value(self.fifo.type)

    def release(self, count):
        _body.append(f"aie.objectfifo.release @{self.fifo.name}({self.port}, {count})")

    def fill(self, buffer, tap=None, group=None):
        group.add(self, buffer, tap, wait=False)

    def drain(self, buffer, tap=None, wait=False, group=None):
        group.add(self, buffer, tap, wait)


class _Value:
    def __init__(self, value_type):
        self.type = value_type


class Buffer:
    def __init__(self, type=None, initial_value=None, name=None):
        self.type, self.initial_value, self.name = type, initial_value, name


class Kernel:
    def __init__(self, symbol, obj, arg_types):
        self.symbol, self.object, self.arg_types = symbol, obj, list(arg_types)

    def __call__(self, *args):
        if len(args) != len(self.arg_types):
            raise TypeError(f"{self.symbol} takes {len(self.arg_types)} args, got {len(args)}")
        for arg, expected in zip(args, self.arg_types, strict=True):
            given = int if isinstance(arg, int) else getattr(arg, "type", None)
            if given is not None and mlir_type(given) != mlir_type(expected):
                raise TypeError(f"{self.symbol}: {mlir_type(given)} for {mlir_type(expected)}")
        _body.append(f"func.call @{self.symbol}({len(args)} args)")


class Worker:
    def __init__(self, core_fn, fn_args, tile=None):
        self.core_fn, self.fn_args = core_fn, list(fn_args)


class TaskGroup:
    _ids = itertools.count()

    def __init__(self):
        self.tasks = []

    def add(self, handle, buffer, tap, wait):
        if len(self.tasks) >= SHIM_BDS:
            raise RuntimeError(f"more than {SHIM_BDS} DMA tasks live: no buffer descriptor left")
        number = next(TaskGroup._ids)
        arg, arg_type = buffer
        offset, dims = (
            (0, [[1, 0]])
            if tap is None
            else (tap.offset, list(zip(tap.sizes, tap.strides, strict=True)))
        )
        pattern = ", ".join(f"<size = {size}, stride = {stride}>" for size, stride in dims)
        _body.append(f"%t{number} = aiex.dma_configure_task_for @{handle.fifo.name} {{")
        _body.append(f"  aie.dma_bd({arg} : {arg_type}, {offset}, [{pattern}])")
        _body.append(f"}}{' {issue_token = true}' if wait else ''}")
        _body.append(f"aiex.dma_start_task(%t{number})")
        self.tasks.append((number, wait))

    def finish(self):
        _body.extend(f"aiex.dma_await_task(%t{n})" for n, wait in self.tasks if wait)
        _body.extend(f"aiex.dma_free_task(%t{n})" for n, wait in self.tasks if not wait)
        self.tasks = []


class Runtime:
    def __init__(self, sequence_fn, fn_args):
        self.sequence_fn, self.fn_args = sequence_fn, list(fn_args)


class Program:
    def __init__(self, device, runtime, workers):
        self.device, self.runtime, self.workers = device, runtime, workers

    def resolve_program(self):
        return _Module(self)


class _Module:
    def __init__(self, program):
        self.text = _print(program)

    def __str__(self):
        return self.text


def _print(program) -> str:
    lines = ["module {", f"  aie.device({program.device.name}) @main {{"]
    kernels = {a.symbol: a for w in program.workers for a in w.fn_args if isinstance(a, Kernel)}
    for kernel in kernels.values():
        types = ", ".join(mlir_type(t) for t in kernel.arg_types)
        lines.append(
            f"    func.func private @{kernel.symbol}({types}) "
            f'attributes {{link_with = "{kernel.object}"}}'
        )
    lines += ["    %shim_noc_tile_0_0 = aie.tile(0, 0)", "    %tile_0_2 = aie.tile(0, 2)"]
    for worker in program.workers:
        for arg in worker.fn_args:
            if isinstance(arg, _Handle):
                f = arg.fifo
                lines.append(f"    aie.objectfifo @{f.name}({f.depth} : i32) : {mlir_type(f.type)}")
            elif isinstance(arg, Buffer):
                lines.append(
                    f'    %{arg.name} = aie.buffer {{sym_name = "{arg.name}"}} : '
                    f"{mlir_type(arg.type)}"
                )
        lines += [
            "    %core_0_2 = aie.core(%tile_0_2) {",
            *_trace(
                worker.core_fn,
                [_Value(a.type) if isinstance(a, Buffer) else a for a in worker.fn_args],
            ),
            "      aie.end",
            "    }",
        ]
    rt = program.runtime
    n_args = len(rt.fn_args) - sum(isinstance(a, _Handle) for a in rt.fn_args)
    host = rt.fn_args[:n_args]
    params = ", ".join(f"%arg{i}: {mlir_type(t)}" for i, t in enumerate(host))
    lines.append(f"    aie.runtime_sequence @sequence({params}) {{")
    lines.append("      aiex.npu.load_pdi {device_ref = @main}")
    buffers = [(f"%arg{i}", mlir_type(t)) for i, t in enumerate(host)]
    lines += _trace(rt.sequence_fn, [*buffers, *rt.fn_args[n_args:]])
    lines += ["    }", "  }", "}"]
    return "\n".join(lines) + "\n"


def _trace(fn, args) -> list[str]:
    _body.clear()
    fn(*args)
    traced = ["      " + line for line in _body]
    _body.clear()
    return traced
