"""The emulated NPU: runs an ELF's launch plan with numpy.

Faithful to the device's dataflow: every argument lives in a "DDR" buffer of its
ABI dtype (bf16, or fp32 for the residual stream, the rope table and the logits);
each launch reads its operands from those buffers, computes in fp32 and rounds its
result to bf16 when writing a bf16 buffer, exactly where the NPU writes to DDR. A
launch that reads a host-filled buffer the host never wrote fails loudly (on the
NPU it would silently compute on whatever the memory held).

Emulated as the kernels compute: the bf16-precise exp (aierun.ops.numerics.exp_bf16)
and the bfp16 operand blocks of the GEMMs that use them (to_bfp16). Not emulated:
the precision of aie_api's scalar inv / invsqrt and the vector units' summation
order; numpy's division and BLAS order stand in for them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from aierun import paths
from aierun.abi import BF16, HOST_WRITTEN, QUANT_DTYPES, ArgSpec, ElfSpec, Role, parse_binding
from aierun.devices.base import Buffer, Device
from aierun.errors import DeviceError, UserError
from aierun.ops import OPS, numerics, quant
from aierun.ops.numerics import Bfp16Operand, to_bf16, to_bfp16


class Bfp16Cache:
    """Static bfp16 GEMM operands as converted before, kept on disk: converting every
    weight a bfp16 GEMM reads is seconds of each emu start (the largest part of it
    once the tokenizer was fast), reading them back is a memory map. An entry is
    named by the sha256 of the bf16 bytes and of numerics.py (whose to_bfp16 made it),
    so changed weights or a changed conversion never find an old entry. The cache is
    only a shortcut: a home it cannot write converts on every start, as before."""

    def __init__(self, root: Path):
        self.root = root

    def converted(self, bf16: np.ndarray) -> np.ndarray:
        digest = hashlib.sha256(_numerics_digest())
        digest.update(repr((bf16.shape, str(bf16.dtype))).encode())
        digest.update(np.ascontiguousarray(bf16).view(np.uint8).data)
        path = self.root / f"{digest.hexdigest()}.npy"
        try:  # .npy cannot name bfloat16: the entry holds its bits as uint16
            stored = np.load(path, mmap_mode="r")
            if stored.shape == bf16.shape and stored.dtype == np.uint16:
                return stored.view(BF16)
        except (OSError, ValueError):  # not there yet, or damaged: convert again
            pass
        values = to_bfp16(bf16.astype(np.float32)).astype(BF16)
        self._store(path, values)
        return values

    def _store(self, path: Path, values: np.ndarray) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
            try:
                with os.fdopen(handle, "wb") as out:
                    np.save(out, values.view(np.uint16))
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError:  # a full disk or read-only home: this start converted, that is all
            pass


@cache
def _numerics_digest() -> bytes:
    return hashlib.sha256(Path(numerics.__file__).read_bytes()).digest()


class EmuBuffer(Buffer):
    def __init__(
        self,
        spec: ArgSpec,
        label: str,
        bfp16_operand: bool = False,
        cache: Bfp16Cache | None = None,
        plain_read: bool = True,
    ):
        super().__init__(spec, label)
        self._bfp16_operand = bfp16_operand  # a bfp16 GEMM reads it: convert when written
        self._cache = cache
        self._version = 0
        self._f32_version = -1
        # Allocated and touched now (at prepare), not inside the first timed call.
        # Every buffer has an fp32 image, the operand the launches compute on; an fp32
        # buffer is its own. Static bf16 data (weights) is kept only as that
        # image (exact for bf16): nothing reads it back, and a bf16 copy as well would
        # cost the emulator a third more memory. Its bf16 host view is a staging array
        # that lives from the write to the sync.
        self._static = spec.role is Role.WEIGHT and spec.dtype != "f32"
        # Static data that only bfp16 GEMMs read (a quantized model's prefill weights:
        # its decode GEMVs read blocks) keeps only that form: no fp32 image.
        self._f32: np.ndarray | None = None
        if plain_read or not self._static or not bfp16_operand:
            self._f32 = np.empty(spec.shape, np.float32)
        if not self._static:  # static data is touched by its write, at prepare
            self._f32.fill(0)
        self._host: np.ndarray | None = None
        # Static data a bfp16 GEMM reads, as its mmul sees it: converted once (every
        # bfp16 value is a bf16 value, so it is kept in bf16) instead of on every call.
        self._bfp16: np.ndarray | None = None
        self._bfp16_version = -1
        if spec.dtype == "f32":
            self._host = self._f32
        elif not self._static:
            self._host = np.empty(spec.shape, spec.np_dtype)
            self._host.fill(0)

    @property
    def host(self) -> np.ndarray:
        if self._host is None:  # static data: stage its bf16 image for the host
            dtype, image = self.spec.np_dtype, self._f32
            if self.written and image is None:
                raise RuntimeError(
                    f"{self.label}: kept only as a bfp16 operand, its written values are "
                    "gone (allocate it with plain_read=True to read it back)"
                )
            self._host = image.astype(dtype) if self.written else np.empty(self.spec.shape, dtype)
        return self._host

    def sync_to_device(self) -> None:
        self._version += 1  # the host changed the bytes: the fp32 image is stale
        self._bfp16 = None
        if self._static:  # convert at prepare, not inside the first call; drop the staging
            if self._f32 is not None:
                self.as_f32()
            if self._bfp16_operand and self._cache is not None:
                self._bfp16 = self._cache.converted(self._host)
                self._bfp16_version = self._version
            elif self._bfp16_operand:
                self.as_bfp16()
            self._host = None

    def sync_from_device(self) -> None:
        pass  # emulated DDR is host memory

    def sync_range_to_device(self, offset: int, nbytes: int) -> None:
        """Refresh only that range of a current fp32 image: appending a position to the
        KV cache then converts one row, not the whole cache, per step."""
        if self._static or self._f32 is self._host or self._f32_version != self._version:
            self.sync_to_device()
            return
        itemsize = self.spec.np_dtype.itemsize
        rows = slice(offset // itemsize, (offset + nbytes) // itemsize)
        self._f32.reshape(-1)[rows] = self._host.reshape(-1)[rows]
        self._version += 1
        self._f32_version = self._version
        self._bfp16 = None

    def as_f32(self) -> np.ndarray:
        """The contents as fp32 (exact for bf16), refreshed only when the bytes
        changed: weights are converted once, which is what makes the emulation fast."""
        assert self._f32 is not None, f"{self.label} is read only as a bfp16 operand"
        stale = self._f32_version != self._version
        if stale and self._host is not None and self._f32 is not self._host:
            np.copyto(self._f32, self._host, casting="unsafe")
        self._f32_version = self._version
        return self._f32

    def as_bfp16(self) -> np.ndarray:
        """The contents as a BFP16-emulated matmul's operand (numerics.to_bfp16),
        converted once per version of the bytes: static data once, an activation once
        however many GEMMs read it (gate and up share theirs)."""
        if self._bfp16 is None or self._bfp16_version != self._version:
            source = self._host if self._f32 is None else self.as_f32()
            values = to_bfp16(np.asarray(source, np.float32))
            self._bfp16 = values.astype(BF16) if self._static else values
            self._bfp16_version = self._version
        if self._static:
            return self._bfp16.astype(np.float32).view(Bfp16Operand)
        return self._bfp16

    def store(self, index: int | None, values: np.ndarray) -> None:
        target = self._host if index is None else self._host[index]
        # The kernel rounds to bf16 when it writes bf16; an fp32 output (e.g. the
        # LM head's logits) is the accumulator written as is.
        rounded = to_bf16(values) if self.spec.dtype == "bf16" else values
        target[...] = rounded.reshape(target.shape)
        self._version += 1
        self.written = True


class QuantBuffer(Buffer):
    """A weight in a GGUF block type: the device layout's bytes (aierun/ops/quant.py),
    and its values decoded once when written (int8 quants, fp32 scales), which the
    emulated GEMV reads: no fp32 image of the weight."""

    def __init__(self, spec: ArgSpec, label: str):
        super().__init__(spec, label)
        self._host = np.zeros(spec.shape, np.uint8)
        self._blocks: quant.Blocks | None = None

    @property
    def host(self) -> np.ndarray:
        return self._host

    def sync_to_device(self) -> None:
        rows = self._host.reshape(-1, self._host.shape[-1])
        tn, tk = quant.parse_layout(self.spec.layout)
        self._blocks = quant.from_device(rows, self.spec.dtype, tn, tk)

    def sync_from_device(self) -> None:
        pass  # emulated DDR is host memory

    def as_blocks(self) -> quant.Blocks:
        assert self._blocks is not None, "read before written"
        return self._blocks


# Host memory the emulator holds per weight element: its fp32 image (EmuBuffer) and, for
# the GEMM weights, the bf16 copy of their bfp16 conversion: 6 bytes (the LM head, read
# by a GEMV only, takes 4; the estimate errs high by that).
EMU_BYTES_PER_WEIGHT = 6


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class EmuDevice(Device):
    name = "emu"
    targets = ("emu", "npu2")  # an npu2 artifact carries its launch plan too

    def check_capacity(self, weight_elements: int) -> None:
        needed, available = weight_elements * EMU_BYTES_PER_WEIGHT, available_memory()
        if available is not None and needed > available:
            raise UserError(
                f"the emu device holds each of this model's {weight_elements / 1e9:.2f} G "
                f"weights as fp32 plus a bf16 GEMM operand: it needs about {needed / 1e9:.1f}"
                f" GB of memory and {available / 1e9:.1f} GB is available. Run the model on "
                "an NPU (--device npu), or on a machine with that much free memory."
            )

    def __init__(self, bfp16_cache: Path | None = None) -> None:
        self._cache = Bfp16Cache(bfp16_cache or paths.home() / "cache" / "emu-bfp16")

    def alloc(
        self, spec: ArgSpec, label: str, bfp16_operand: bool = False, plain_read: bool = True
    ) -> Buffer:
        if spec.dtype in QUANT_DTYPES:
            return QuantBuffer(spec, label)
        return EmuBuffer(spec, label, bfp16_operand, self._cache, plain_read)

    def load(self, spec: ElfSpec, files: dict[str, Any]) -> EmuElf:
        unknown = {launch.op for launch in spec.launches} - set(OPS)
        if unknown:
            raise DeviceError(f"{spec.instance}: the emulator has no op {sorted(unknown)}")
        return EmuElf.of(spec)

    def run(self, elf: EmuElf, spec: ElfSpec, buffers: dict[str, Buffer]) -> None:
        produced: set[str] = set()
        for number, launch in enumerate(elf.launches):
            bfp16 = launch.params.get("mma") == "bfp16"
            operands = [
                self._operand(spec, buffers, operand, produced, number, bfp16)
                for operand in launch.inputs
            ]
            results = OPS[launch.op](launch.params, *operands)
            for (name, index), values in zip(launch.outputs, results, strict=True):
                buffers[name].store(index, values)  # type: ignore[attr-defined]
                produced.add(name)

    @staticmethod
    def _operand(
        spec: ElfSpec,
        buffers: dict[str, Buffer],
        operand: Operand,
        produced: set[str],
        number: int,
        bfp16: bool,
    ) -> np.ndarray:
        buffer = buffers[operand.name]
        written = buffer.written if operand.host_filled else operand.name in produced
        if not written:
            raise DeviceError(
                f"{spec.instance} launch {number} ({spec.launches[number].op}) reads "
                f"{operand.name!r} ({spec.arg(operand.name).role}, buffer {buffer.label}) "
                "which nothing has written: the NPU would compute on stale memory here."
            )
        if isinstance(buffer, QuantBuffer):
            return buffer.as_blocks()  # read whole: only a GEMV's weight is quantized
        values = buffer.as_bfp16() if bfp16 else buffer.as_f32()  # type: ignore[attr-defined]
        return values if operand.index is None else values[operand.index]


@dataclass(frozen=True)
class Operand:
    name: str
    index: int | None  # a slice of the argument's leading axis, or all of it
    # Filled by the host (weight / const / input), as the consumer's ABI says: a
    # bound handle may be another ELF's output.
    host_filled: bool


@dataclass(frozen=True)
class EmuLaunch:
    op: str
    params: dict[str, Any]
    inputs: tuple[Operand, ...]
    outputs: tuple[tuple[str, int | None], ...]


@dataclass(frozen=True)
class EmuElf:
    """A launch plan with its bindings parsed once at load, not on every call."""

    launches: tuple[EmuLaunch, ...]

    @classmethod
    def of(cls, spec: ElfSpec) -> EmuElf:
        def operand(binding: str) -> Operand:
            name, index = parse_binding(binding)
            return Operand(name, index, spec.arg(name).role in HOST_WRITTEN)

        return cls(
            tuple(
                EmuLaunch(
                    launch.op,
                    launch.params,
                    tuple(operand(b) for b in launch.inputs),
                    tuple(parse_binding(b) for b in launch.outputs),
                )
                for launch in spec.launches
            )
        )
