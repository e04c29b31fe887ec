"""Stand-in `aie.iron.controlflow` (tests only): like IRON, `range_` traces its body
once (it becomes an scf.for), so an unrolled Python loop and a range_ loop differ
in the emitted core body."""

from aie.iron import _current


def range_(count):
    _current().append(f"scf.for 0 to {count} {{")
    yield 0
    _current().append("}")
