"""Stand-in `aie.iron` (tests only): the project's recorded model of IRON
(aiebuild.array.iron_record) with a printer (`printer.py`): a design run against it records
what it builds, and `Program.resolve_program()` prints that record as IRON 1.4 would.
One model of IRON, no second one that could drift.

The model records inside `iron_record.recording()`; the stand-in must not leave one
open while a design runs (`ops.common.iron()` would then hand out the model's
own API, whose programs do not print). So the few calls that create objects outside
a traced body (an ObjectFifo, a Buffer, a memory-tile link, the Program, which
traces the bodies) each run inside a recording of their own; the printer finds
everything from the program's workers and runtime. Limit: the fifos a link makes are
the model's own, so linking one of those again (a split of a forward) is not supported."""

from aiebuild.array import iron_record
from aiebuild.array.iron_record import Kernel, Runtime, TaskGroup, Worker

from .printer import print_program

__all__ = ["Buffer", "Kernel", "ObjectFifo", "Program", "Runtime", "TaskGroup", "Worker"]


class _Handle(iron_record.ObjectFifoHandle):
    def split(self, *args, **kwargs):
        with iron_record.recording():
            return super().split(*args, **kwargs)

    def join(self, *args, **kwargs):
        with iron_record.recording():
            return super().join(*args, **kwargs)

    def forward(self, *args, **kwargs):
        with iron_record.recording():
            return super().forward(*args, **kwargs)


class ObjectFifo(iron_record.ObjectFifo):
    def __init__(self, *args, **kwargs):
        with iron_record.recording():
            super().__init__(*args, **kwargs)

    def prod(self, *args, **kwargs):
        return _linkable(super().prod(*args, **kwargs))

    def cons(self, *args, **kwargs):
        return _linkable(super().cons(*args, **kwargs))


def _linkable(handle: iron_record.ObjectFifoHandle) -> _Handle:
    """The model's handle, able to make memory-tile links outside a recording."""
    handle.__class__ = _Handle
    return handle


class Buffer(iron_record.Buffer):
    def __init__(self, *args, **kwargs):
        with iron_record.recording():
            super().__init__(*args, **kwargs)


class Program(iron_record.Program):
    def __init__(self, *args, **kwargs):
        with iron_record.recording():
            super().__init__(*args, **kwargs)

    def resolve_program(self) -> "_Module":
        return _Module(print_program(self))


class _Module:
    """What IRON's resolve_program returns: its str() is the MLIR text."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text
