"""The ELF contract between build and runtime: argument roles, launches, ELF specs.

An ELF is one device call that runs several launches back to back. Every argument
has a name, a shape, a dtype and exactly one role; the runtime derives all buffer
behaviour from the role (docs/design.md section 5). `aiebuild` produces these specs,
`aierun` consumes them; the JSON form below is what travels in artifacts. The npu2
entry point's name and argument order are stated here too (`ElfSpec.kernel_name`,
`ElfSpec.kernel_arg_order`): the build stitches the ELF by them, the NPU device calls
it by them, and the npu2 content key covers this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
# GGUF block-quantized weights are bytes of the device layout (aierun/ops/quant.py): an
# argument of such a type is [rows, bytes per row] of uint8.
# Prefill buckets are multiples of 32 rows: a flash-attention block and the GEMMs' row
# tile (the build refuses others; the runtime names them).
BUCKET_MULTIPLE = 32
QUANT_DTYPES = ("q4_0", "q4_1", "q8_0")
DTYPES: dict[str, np.dtype] = {
    "bf16": BF16, "f32": np.dtype(np.float32), "i32": np.dtype(np.int32),
    **dict.fromkeys(QUANT_DTYPES, np.dtype(np.uint8)),
}  # fmt: skip


class Role(StrEnum):
    WEIGHT = "weight"  # written once at prepare, one buffer per layer
    INPUT = "input"  # written by the host for every call that passes a new array
    INTERMEDIATE = "intermediate"  # device-only, between launches of one ELF
    SCRATCH = "scratch"  # device-only working memory
    OUTPUT = "output"  # read back as a zero-copy view after every call
    # An output kept per layer: the KV cache the prefill writes for decode to read.
    # One buffer per (ELF, layer), valid until that ELF's next call for that layer.
    CACHE = "cache"


# The ELFs of a Llama-family model (docs/design.md section 4), by the names the build
# gives them and the runtime calls them by: prefill ELFs per bucket, then decode's.
RMS_GEMMS_ROPE, FLASH_ATTN, O_FFN = "rms_gemms_rope", "flash_attn", "o_ffn"
RMS_GEMV_ROPE, O_GEMV_FFN, LM_HEAD_GEMV = "rms_gemv_rope", "o_gemv_ffn", "lm_head_gemv"


def attention_elf(past: int) -> str:
    """The attention ELF of a prompt's chunk that starts at position `past`: flash_attn
    for the first, flash_attn_p<past> for a later one (one per bucket, like every
    prefill ELF)."""
    return f"{FLASH_ATTN}_p{past}" if past else FLASH_ATTN


def chunk_elfs(past: int, bucket: int) -> tuple[str, str, str]:
    """The instances each layer of a prompt's chunk at `past` calls in `bucket`."""
    return tuple(f"{name}.s{bucket}" for name in (RMS_GEMMS_ROPE, attention_elf(past), O_FFN))


# The decode ELF's argument the host binds to its device-resident KV cache of a layer.
KV_CACHE = "kv_cache"
# An ELF param: the cached positions the decode attention streams, where fewer than
# the cache holds (o_gemv_ffn.w<walk>: the early steps of a generation read only the
# first blocks of the cache; the DMA sizes are fixed per ELF).
WALK = "walk"


def decode_instance(name: str, walk: int | None = None) -> str:
    """The instance of decode ELF `name` whose attention walks `walk` positions (None:
    the whole cache)."""
    return f"{name}.w{walk}" if walk else name


HOST_WRITTEN = (Role.WEIGHT, Role.INPUT)
HOST_READ = (Role.OUTPUT, Role.CACHE)  # what a call leaves for the host (or another ELF)


@dataclass(frozen=True)
class ArgSpec:
    """One ELF argument. `source` names what fills a weight or const buffer:
    a checkpoint tensor (with `{layer}` for per-layer weights) or a runtime table
    such as `rope`; `layout` says how the tensor is arranged in the buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: Role
    source: str | None = None
    layout: str = "rowmajor"

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.np_dtype.itemsize

    def per_layer(self) -> bool:
        return self.source is not None and "{layer}" in self.source


# A weight made of several checkpoint tensors: its source names them joined by
# SOURCE_JOIN, and its layout `interleave<G>:<inner>` takes G rows of each in turn (G
# rows of the first, the same G rows of the second, the next G of the first, ...), then
# lays them out as `inner` (rowmajor, or a block type's records). SwiGLU's decode reads
# gate and up so in one GEMV (aiebuild/ops/gemv.py): each of its blocks is SWIGLU_GROUP
# gate rows then the same up rows, and its epilogue writes their silu(g) * u.
SOURCE_JOIN = "+"
INTERLEAVE = "interleave"
SWIGLU = "swiglu"  # the GEMV launch's `epilogue`
SWIGLU_GROUP = 16


def interleaved_layout(group: int, inner: str) -> str:
    return f"{INTERLEAVE}{group}:{inner}"


def split_layout(layout: str) -> tuple[int | None, str]:
    """(rows per turn, inner layout) of an interleaved layout, else (None, layout)."""
    if not layout.startswith(INTERLEAVE):
        return None, layout
    group, inner = layout.removeprefix(INTERLEAVE).split(":", 1)
    return int(group), inner


def interleave_rows(parts: list[np.ndarray], group: int) -> np.ndarray:
    """The rows of equally shaped `parts` [N, ...], `group` rows of each in turn."""
    stacked = np.stack([p.reshape(-1, group, *p.shape[1:]) for p in parts], axis=1)
    return stacked.reshape(-1, *parts[0].shape[1:])


_BINDING = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?$")


def parse_binding(binding: str) -> tuple[str, int | None]:
    """`"logits[3]"` -> ("logits", 3): a launch may use one slice of an argument's
    leading axis (on the NPU a memref.subview of the host buffer)."""
    match = _BINDING.match(binding)
    if not match:
        raise ValueError(f"bad launch binding {binding!r}")
    index = match.group("index")
    return match.group("name"), None if index is None else int(index)


@dataclass(frozen=True)
class Launch:
    """One launch inside an ELF: an op of the vocabulary in `aierun.ops`, its
    compile-time parameters, which ELF arguments it reads and writes, and its work as
    the build counted it (`flops`; `ddr_bytes`, what it reads from and writes to DDR),
    which the runtime's roofline reads."""

    op: str
    params: dict[str, Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    label: str = ""
    flops: int = 0
    ddr_bytes: int = 0


@dataclass(frozen=True)
class ElfSpec:
    """A multi-launch ELF: its name (the build/runtime contract of docs/design.md
    section 4), the phase that calls it, the prefill bucket (0 for decode ELFs),
    the argument ABI and the launches in order."""

    name: str
    phase: str
    bucket: int
    args: tuple[ArgSpec, ...]
    launches: tuple[Launch, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def instance(self) -> str:
        """Unique name of this ELF in a manifest: prefill ELFs exist per bucket, and
        besides the decode ELF whose attention walks the whole KV cache, one per
        shorter walk (`decode_instance`)."""
        if self.bucket:
            return f"{self.name}.s{self.bucket}"
        return decode_instance(self.name, self.params.get(WALK))

    def arg(self, name: str) -> ArgSpec:
        for spec in self.args:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.instance} has no argument {name!r}")

    def args_with(self, *roles: Role) -> list[ArgSpec]:
        return [a for a in self.args if a.role in roles]

    # -- the full ELF's entry point, as the npu2 build stitches it and XRT calls it --
    @property
    def sequence_name(self) -> str:
        """The runtime sequence of the ELF's wrapper device @main: the ELF's name (each
        prefill bucket is its own ELF file, so the name need not carry the bucket).
        The host calls kernel `main:<sequence_name>`."""
        return self.name

    @property
    def kernel_name(self) -> str:
        return f"main:{self.sequence_name}"

    @property
    def kernel_arg_order(self) -> tuple[ArgSpec, ...]:
        """The arguments of the kernel in XRT index order: *every* ELF argument in ABI
        order, intermediates and scratch included (they live in DDR as device-only
        buffers the host never syncs). An argument's XRT index is its position here."""
        return self.args

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ElfSpec:
        """The spec a plan describes; ValueError naming what is malformed (a plan is
        checked before anything is allocated from it)."""
        try:
            spec = cls._from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed launch plan ({exc!r})") from None
        for arg in spec.args:
            if (
                arg.dtype not in DTYPES
                or not arg.shape
                or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in arg.shape
                )
            ):
                raise ValueError(f"argument {arg.name!r} has dtype {arg.dtype!r} and shape "
                                 f"{list(arg.shape)}: expected a dtype of {sorted(DTYPES)} "
                                 "and positive whole dimensions")  # fmt: skip
        names = {arg.name for arg in spec.args}
        for launch in spec.launches:
            for binding in (*launch.inputs, *launch.outputs):
                if parse_binding(binding)[0] not in names:
                    raise ValueError(f"launch {launch.op!r} binds {binding!r}, no argument")
        return spec

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> ElfSpec:
        args = tuple(
            ArgSpec(**{**a, "shape": tuple(a["shape"]), "role": Role(a["role"])})
            for a in data["args"]
        )
        launches = tuple(
            Launch(
                **{**launch, "inputs": tuple(launch["inputs"]), "outputs": tuple(launch["outputs"])}
            )
            for launch in data["launches"]
        )
        return cls(
            data["name"], data["phase"], data["bucket"], args, launches, data.get("params", {})
        )


def canonical_json(data: Any) -> str:
    """The one serialization used for hashing: sorted keys, no whitespace."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
