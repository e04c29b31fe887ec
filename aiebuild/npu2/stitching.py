"""The stitcher: per-launch IRON modules -> one multi-launch module for one full ELF.

Input: one MLIR module per launch, as IRON 1.4 prints it: `module { aie.device(npu2) {
... aie.runtime_sequence(%arg0: memref<...>, ...) { ... } } }`, the default symbol
names `@main` and `@sequence` left out, tiles unplaced (`aie.logical_tile`); a named
device or sequence is taken as well. Output: one module where

- each launch's device is renamed to its own symbol (`@l0_rmsnorm`, `@l1_gemm`, ...),
  its body and runtime sequence kept;
- a wrapper `aie.device(npu2) @main` holds `aie.runtime_sequence @<elf name>` taking
  the ELF's arguments, and for every launch in order does
  `aiex.configure @<dev> { aiex.run @<seq>(<its args>) }` (docs/hardware.md, "Stack C.
  Several launches in one ELF"); the host calls kernel `main:<elf name>`.

Decisions recorded here:

- Intermediates and scratch are extra @main arguments. @main takes *every* ELF
  argument in ABI order (`ElfSpec.args`), because intermediates live in DDR on the
  NPU2 and the runtime already allocates one device-only buffer per intermediate /
  scratch argument by role (aierun.buffers); the host never syncs them. The XRT
  argument index of an ELF argument is therefore its position in `ElfSpec.args`.
- A launch bound to a slice of an argument (`"w_lm[3]"`, aierun.abi.parse_binding)
  takes the *whole* host argument: its design applies the slice's offset in its
  DMA access pattern (aiebuild.ops.common.slice_offset). Passing a strided,
  offset memref to a sequence that declares an identity layout would not verify,
  so the stitcher refuses a slice bound to anything but the whole argument.
- A launch declaring another shape for the same bytes (`x[1, E]` as `memref<E>`)
  gets a `memref.reinterpret_cast` of the host argument at offset 0 (identity
  layout) inside its configure block; the element count and type must agree.
- Child devices must not load their own image: `aiex.npu.load_pdi` ops in child
  sequences are removed (with them the build succeeds and the device hangs at
  dispatch, ERT_CMD_STATE_TIMEOUT, as reported upstream).
- Kernel symbols are unique across the ELF: a symbol that two launches link from
  different objects (the same kernel compiled with different `-D` parameters) is
  renamed in the later launch, which then links a renamed copy of the object; the
  `ObjectRename` list tells the object build which `llvm-objcopy --redefine-sym`
  copies to make.
- With `--expand-load-pdis`, aiecc before Xilinx/mlir-aie#3622 needs an even number
  of configure points (each one resets the array with one of two empty PDIs in turn;
  an odd count ends on the PDI the next dispatch starts with, and the firmware skips
  that repeated load). `pad_odd_configures=True` adds what #3622 adds: one more reset,
  as a configure of an empty device `@RESET_PAD`, which writes no configuration
  (aiebuild.npu2.target.needs_reset_pad says which versions need it).

This is text-level work on purpose: it runs (and is tested) without mlir-aie.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from aierun.abi import QUANT_DTYPES, ArgSpec, parse_binding

# A GGUF block type is bytes: IRON types numpy uint8 as MLIR ui8 (mlir-aie db06374
# python/helpers/util.py line 60, `np.uint8: T.ui8`).
MLIR_ELEMENT = {"bf16": "bf16", "f32": "f32", "i32": "i32", **dict.fromkeys(QUANT_DTYPES, "ui8")}
RESET_PAD = "reset_pad"  # an empty device: configuring it is a reset and nothing else
_DEVICE = re.compile(r"aie\.device\((?P<kind>[\w]+)\)\s*(?:@(?P<name>[\w$.]+))?\s*\{")
_SEQUENCE = re.compile(
    r"aie\.runtime_sequence\s*(?:@(?P<name>[\w$.]+))?\s*\((?P<args>[^)]*)\)\s*\{"
)
_MEMREF = re.compile(r"^memref<(?P<dims>(?:\d+x)*)(?P<element>\w+)>$")
# An external kernel declaration and the object it links: the one pattern both for
# reading the declarations and for pointing them at a renamed object copy.
_KERNEL_DECL = re.compile(
    r"func\.func\s+private\s+@(?P<symbol>[\w$.]+)\s*\([^)]*\)[^{}]*?"
    r"attributes\s*\{[^}]*?link_with\s*=\s*\"(?P<object>[^\"]+)\""
)
# The start of a load_pdi op, pretty (`aiex.npu.load_pdi {...}`) or generic form;
# the op ends at the first line break outside brackets (_op_end).
_LOAD_PDI = re.compile(r'^[ \t]*(?:"aiex\.npu\.load_pdi"|aiex\.npu\.load_pdi\b)', re.MULTILINE)


class StitchError(ValueError):
    """A per-launch module does not fit the ELF it is stitched into (a design bug)."""


@dataclass(frozen=True)
class ChildModule:
    """One launch's module: the device symbol it gets and the ELF argument bindings
    of its runtime sequence's arguments, in order (launch inputs, then outputs)."""

    device: str
    mlir: str
    bindings: tuple[str, ...]


@dataclass(frozen=True)
class ObjectRename:
    """Make `object` from `source` with every (old, new) symbol redefined."""

    source: str
    object: str
    symbols: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Stitched:
    mlir: str
    sequence: str  # the host calls kernel "main:<sequence>"
    objects: tuple[str, ...]  # every link_with object, renamed copies included
    renames: tuple[ObjectRename, ...] = ()
    removed_load_pdis: int = 0


@dataclass
class _Child:
    device_kind: str
    body: str  # the device region's text between its braces
    sequence: str
    arg_types: list[str]
    kernels: dict[str, str] = field(default_factory=dict)  # symbol -> object


def stitch(
    children: Sequence[ChildModule],
    host_args: Sequence[ArgSpec],
    sequence: str,
    pad_odd_configures: bool = False,
) -> Stitched:
    """Stitch the per-launch modules of one ELF (see the module docstring)."""
    if not children:
        raise StitchError("an ELF needs at least one launch")
    parsed = [_parse_child(child) for child in children]
    kinds = {p.device_kind for p in parsed}
    if len(kinds) != 1:
        raise StitchError(f"launches target different devices {sorted(kinds)}: configure needs one")
    (kind,) = kinds
    renames = _unique_kernel_symbols(children, parsed)
    removed = sum(len(_LOAD_PDI.findall(p.body)) for p in parsed)
    devices = [
        _device_text(p.device_kind, c.device, _without_load_pdis(p.body))
        for c, p in zip(children, parsed, strict=True)
    ]
    configures = [
        _configure(child, p, host_args) for child, p in zip(children, parsed, strict=True)
    ]
    if pad_odd_configures and len(configures) % 2:
        devices.append(_device_text(kind, RESET_PAD, "\n  "))
        configures.append(f"      aiex.configure @{RESET_PAD} {{\n      }}")
    wrapper = _wrapper(kind, sequence, host_args, configures)
    objects = sorted({obj for p in parsed for obj in p.kernels.values()})
    text = "module {\n" + "\n".join([*devices, wrapper]) + "\n}\n"
    return Stitched(text, sequence, tuple(objects), tuple(renames), removed)


# -- parsing --------------------------------------------------------------------


def _parse_child(child: ChildModule) -> _Child:
    match = _DEVICE.search(child.mlir)
    if match is None:
        raise StitchError(f"{child.device}: no aie.device in the launch module")
    end = _block_end(child.mlir, match.end() - 1)
    if _DEVICE.search(child.mlir, end):
        raise StitchError(f"{child.device}: a launch module must hold exactly one aie.device")
    body = child.mlir[match.end() : end]
    sequences = list(_SEQUENCE.finditer(body))
    if len(sequences) != 1:
        raise StitchError(f"{child.device}: expected one runtime sequence, found {len(sequences)}")
    seq = sequences[0]
    name = seq.group("name")
    if name is None:  # an unnamed sequence gets a name, so that aiex.run can call it
        name = "sequence"
        body = body[: seq.start()] + body[seq.start() :].replace(
            "aie.runtime_sequence", f"aie.runtime_sequence @{name}", 1
        )
    arg_types = [_arg_type(a) for a in _split_top_level(seq.group("args")) if a.strip()]
    if len(arg_types) != len(child.bindings):
        raise StitchError(
            f"{child.device}: its runtime sequence takes {len(arg_types)} arguments but the "
            f"launch binds {len(child.bindings)} ({', '.join(child.bindings)})"
        )
    kernels = {m.group("symbol"): m.group("object") for m in _KERNEL_DECL.finditer(body)}
    return _Child(match.group("kind"), body, name, arg_types, kernels)


def _unquoted(text: str, index: int):
    """(index, char) of `text` from `index` on, skipping quoted strings (MLIR string
    attributes may hold any bracket)."""
    quoted = False
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        else:
            yield index, char
        index += 1


def _block_end(text: str, open_brace: int) -> int:
    """Index of the brace closing the one at `open_brace`."""
    depth = 0
    for index, char in _unquoted(text, open_brace):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    raise StitchError("unbalanced braces in a launch module")


def _without_load_pdis(body: str) -> str:
    while (match := _LOAD_PDI.search(body)) is not None:
        body = body[: match.start()] + body[_op_end(body, match.end()) :]
    return body


def _op_end(text: str, index: int) -> int:
    """Index just past the line break ending the op that continues at `index`
    (brackets may span lines; `->` is not a bracket)."""
    depth = 0
    for position, char in _unquoted(text, index):
        if char in "({[<":
            depth += 1
        elif char in ")}]>" and not (char == ">" and text[position - 1] == "-"):
            depth -= 1
        elif char == "\n" and depth <= 0:
            return position + 1
    return len(text)


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "<([":
            depth += 1
        elif char in ">)]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def _arg_type(argument: str) -> str:
    _, _, type_text = argument.partition(":")
    return type_text.strip()


# -- symbols --------------------------------------------------------------------


def _unique_kernel_symbols(children: Sequence[ChildModule], parsed: list[_Child]):
    """Rename symbols that an earlier launch already links from another object."""
    owner: dict[str, str] = {}  # symbol -> object that defines it in this ELF
    renames: dict[str, ObjectRename] = {}
    for child, p in zip(children, parsed, strict=True):
        clashes = {s: o for s, o in p.kernels.items() if owner.setdefault(s, o) != o}
        by_object: dict[str, list[str]] = {}
        for symbol, obj in clashes.items():
            by_object.setdefault(obj, []).append(symbol)
        for obj, symbols in by_object.items():
            new_object = f"{PurePosixPath(obj).stem}.{child.device}.o"
            pairs = tuple((s, f"{s}__{child.device}") for s in sorted(symbols))
            renames[new_object] = ObjectRename(obj, new_object, pairs)
            for old, new in pairs:
                p.body = re.sub(rf"@{re.escape(old)}\b", f"@{new}", p.body)
                owner[new] = new_object
            # Every kernel of this launch linked from that object now links the copy.
            p.body = _relink(p.body, obj, new_object)
            p.kernels = {
                (dict(pairs).get(s, s)): (new_object if o == obj else o)
                for s, o in p.kernels.items()
            }
    return list(renames.values())


def _relink(body: str, obj: str, new_object: str) -> str:
    """Point every kernel declaration in `body` that links `obj` at `new_object`."""

    def swap(match: re.Match[str]) -> str:
        if match.group("object") != obj:
            return match.group(0)
        start, end = (i - match.start() for i in match.span("object"))
        return match.group(0)[:start] + new_object + match.group(0)[end:]

    return _KERNEL_DECL.sub(swap, body)


# -- emitting -------------------------------------------------------------------


def _device_text(kind: str, name: str, body: str) -> str:
    return f"  aie.device({kind}) @{name} {{{body}}}"


def memref_type(arg: ArgSpec) -> str:
    return f"memref<{'x'.join(str(d) for d in arg.shape)}x{MLIR_ELEMENT[arg.dtype]}>"


def _configure(child: ChildModule, parsed: _Child, host_args: Sequence[ArgSpec]) -> str:
    index_of = {arg.name: i for i, arg in enumerate(host_args)}
    casts, operands, types = [], [], []
    for position, (binding, child_type) in enumerate(
        zip(child.bindings, parsed.arg_types, strict=True)
    ):
        name, slot = parse_binding(binding)
        if name not in index_of:
            raise StitchError(f"{child.device}: binds {binding!r}, which is no ELF argument")
        host = host_args[index_of[name]]
        value = f"%arg{index_of[name]}"
        if slot is not None:
            _check_slice(child, position, host, slot, child_type)
        if child_type == memref_type(host):
            operands.append(value)
            types.append(child_type)
            continue
        casts.append(_reshape(child, position, value, host, child_type))
        operands.append(f"%{child.device}_a{position}")
        types.append(child_type)
    lines = [f"      aiex.configure @{child.device} {{", *casts]
    lines.append(
        f"        aiex.run @{parsed.sequence}({', '.join(operands)}) : ({', '.join(types)})"
    )
    return "\n".join([*lines, "      }"])


def _check_slice(
    child: ChildModule, position: int, host: ArgSpec, slot: int, child_type: str
) -> None:
    """A slice binding passes the whole argument: the child's DMA pattern applies it."""
    if not 0 <= slot < host.shape[0]:
        raise StitchError(f"{child.device}: slice {slot} of {host.name} is out of range")
    if child_type != memref_type(host):
        raise StitchError(
            f"{child.device}: argument {position} binds the slice {host.name}[{slot}] as "
            f"{child_type}; its runtime sequence must take the whole {memref_type(host)} "
            "and start its access pattern at the slice (ops.common.slice_offset)"
        )


def _reshape(child: ChildModule, position: int, value: str, host: ArgSpec, child_type: str) -> str:
    """A view of a whole host argument with the child's shape (same elements, offset 0,
    identity layout)."""
    match = _MEMREF.match(child_type)
    if match is None:
        raise StitchError(f"{child.device}: argument {position} has unsupported type {child_type}")
    dims = [int(d) for d in match.group("dims").split("x") if d]
    if match.group("element") != MLIR_ELEMENT[host.dtype] or math.prod(dims) != math.prod(
        host.shape
    ):
        raise StitchError(
            f"{child.device}: argument {position} is {child_type} but binds "
            f"{host.name} of {memref_type(host)}"
        )
    strides = [math.prod(dims[i + 1 :]) for i in range(len(dims))]
    return (
        f"        %{child.device}_a{position} = memref.reinterpret_cast {value} to offset: "
        f"[0], sizes: [{', '.join(map(str, dims))}], strides: "
        f"[{', '.join(map(str, strides))}] : {memref_type(host)} to {child_type}"
    )


def _wrapper(kind: str, sequence: str, host_args: Sequence[ArgSpec], configures: list[str]) -> str:
    params = ", ".join(f"%arg{i}: {memref_type(a)}" for i, a in enumerate(host_args))
    return "\n".join(
        [
            f"  aie.device({kind}) @main {{",
            f"    aie.runtime_sequence @{sequence}({params}) {{",
            *configures,
            "    }",
            "  }",
        ]
    )
