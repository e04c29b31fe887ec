"""Buffer management driven by argument roles (docs/design.md section 5).

- weight: one buffer per (tensor, layout, shape, dtype), written once at prepare and
  shared by every ELF that reads it so (prefill and decode use the same wq).
- input: pooled per ELF instance (shared by all layers); written on every call
  unless the caller passes the very array object it passed last time (the rope
  row of a decode step, shared by all layers), so callers must not modify an
  input array in place between calls; a device buffer handle may be bound
  instead (no host copy).
- intermediate / scratch: pooled per ELF instance, never touched by the host.
- output: two pooled buffers per ELF instance used in turn, so that one layer's
  output can feed the next layer's call of the same ELF. An output is valid until
  the second-next call of its ELF.
- cache: one buffer per ELF instance and layer (the KV cache a prefill ELF writes
  for decode to read), valid until that ELF's next call for that layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from aierun.abi import ArgSpec, ElfSpec, Role, parse_binding
from aierun.devices.base import Buffer, Device
from aierun.errors import UserError

OUTPUT_SLOTS = 2
# (source name with the layer filled in, layout, shape, dtype) -> host array to preload
SourceResolver = Callable[[str, str, tuple[int, ...], str], np.ndarray]


class BindingError(UserError):
    pass


def bfp16_read_sources(specs: Iterable[ElfSpec]) -> frozenset[str]:
    """The static data (weights, consts, by source) that some launch reads as a bfp16
    mmul operand (`"mma": "bfp16"`): a device may keep it in that form too."""
    return frozenset(
        arg.source
        for spec in specs
        for launch in spec.launches
        if launch.params.get("mma") == "bfp16"
        for arg in (spec.arg(parse_binding(b)[0]) for b in launch.inputs)
        if arg.source
    )


def plain_read_sources(specs: Iterable[ElfSpec]) -> frozenset[tuple[str, str]]:
    """The static data (by source and dtype) that some launch reads as it is, not as a
    bfp16 operand: what a device must keep in its plain form."""
    return frozenset(
        (arg.source, arg.dtype)
        for spec in specs
        for launch in spec.launches
        if launch.params.get("mma") != "bfp16"
        for arg in (spec.arg(parse_binding(b)[0]) for b in launch.inputs)
        if arg.source
    )


class BufferManager:
    def __init__(self, device: Device, resolve_source: SourceResolver, keep_plain: bool = False):
        """`keep_plain`: every static buffer keeps its plain form, so that its host view
        reads back what was written (an observer inspecting calls); else data only bfp16
        GEMMs read is kept only in that form."""
        self.device = device
        self.resolve_source = resolve_source
        self.keep_plain = keep_plain
        self._weights: dict[tuple[str, str, tuple[int, ...], str], Buffer] = {}
        self._pooled: dict[tuple[str, str], Buffer] = {}
        self._outputs: dict[tuple[str, str], list[Buffer]] = {}
        self._caches: dict[tuple[str, str, int | None], Buffer] = {}
        self._calls: dict[str, int] = {}
        self._input_specs: dict[str, dict[str, ArgSpec]] = {}
        self._fixed_sets: dict[tuple[str, int | None, int], dict[str, Buffer]] = {}
        self.preloaded_bytes = 0
        self._bfp16_sources: frozenset[str] = frozenset()
        self._plain_sources: frozenset[tuple[str, str]] = frozenset()

    # -- prepare -------------------------------------------------------------
    def preload(self, specs: Iterable[ElfSpec], layers: range) -> None:
        """Allocate every buffer these ELFs need and write their weights and consts,
        so that no call pays for an allocation. All ELFs at once: a weight buffer is
        shared by every ELF that reads its tensor, and how it is allocated depends on
        all of its readers (`bfp16_read_sources`)."""
        specs = list(specs)
        self._bfp16_sources = bfp16_read_sources(specs)
        self._plain_sources = plain_read_sources(specs)
        for spec in specs:
            self._preload(spec, layers)

    def _preload(self, spec: ElfSpec, layers: range) -> None:
        for arg in spec.args_with(Role.WEIGHT):
            for layer in layers if arg.per_layer() else [None]:
                self._weight(spec, arg, layer)
        for arg in spec.args_with(Role.INPUT, Role.INTERMEDIATE, Role.SCRATCH):
            self._pool(spec, arg)
        for arg in spec.args_with(Role.OUTPUT):
            self._output(spec, arg, 0)
        for arg in spec.args_with(Role.CACHE):
            for layer in layers:
                self.cache_buffer(spec, arg.name, layer)

    def _weight(self, spec: ElfSpec, arg: ArgSpec, layer: int | None) -> Buffer:
        key = _weight_key(arg, layer)
        source = key[0]
        if key not in self._weights:
            buffer = self.device.alloc(arg, source, **self._reads(arg))
            self.preloaded_bytes += self._write_static(buffer, self._resolved(spec, arg, source))
            self._weights[key] = buffer
        return self._weights[key]

    def _reads(self, arg: ArgSpec) -> dict[str, bool]:
        """How the launches read a static argument (Device.alloc's flags)."""
        return {
            "bfp16_operand": arg.source in self._bfp16_sources,
            "plain_read": self.keep_plain or (arg.source, arg.dtype) in self._plain_sources,
        }

    @staticmethod
    def _write_static(buffer: Buffer, array: np.ndarray) -> int:
        nbytes = buffer.write(array)
        # Static data is never rewritten: holding its source (often the checkpoint's
        # memory map) would only keep the source's pages resident.
        buffer.last_source = None
        return nbytes

    def _resolved(self, spec: ElfSpec, arg: ArgSpec, source: str) -> np.ndarray:
        array = self.resolve_source(source, arg.layout, arg.shape, arg.dtype)
        _check(spec, arg, array.shape, array.dtype)
        return array

    # -- per call ------------------------------------------------------------
    def bind(
        self, spec: ElfSpec, layer: int | None, values: dict[str, Any]
    ) -> tuple[dict[str, Buffer], int]:
        """Buffers for every argument of one call, and the bytes the host wrote."""
        inputs = self._input_args(spec)
        if values.keys() != inputs.keys():
            raise BindingError(
                f"{spec.instance}: inputs missing {sorted(inputs.keys() - values.keys())}, "
                f"not inputs {sorted(values.keys() - inputs.keys())}"
            )
        calls = self._calls.get(spec.instance, 0)
        self._calls[spec.instance] = calls + 1
        buffers = dict(self._fixed(spec, layer, calls % OUTPUT_SLOTS))
        written = 0
        for name, arg in inputs.items():
            buffers[name], nbytes = self._bound_input(spec, arg, values[name])
            written += nbytes
        return buffers, written

    def _input_args(self, spec: ElfSpec) -> dict[str, ArgSpec]:
        if spec.instance not in self._input_specs:
            self._input_specs[spec.instance] = {a.name: a for a in spec.args_with(Role.INPUT)}
        return self._input_specs[spec.instance]

    def _fixed(self, spec: ElfSpec, layer: int | None, slot: int) -> dict[str, Buffer]:
        """Every non-input buffer of a call: the same for each (ELF, layer, output
        slot), so it is looked up once and reused (less host work per call)."""
        key = (spec.instance, layer, slot)
        if key not in self._fixed_sets:
            fixed = {}
            for arg in spec.args:
                if arg.role is Role.WEIGHT:
                    fixed[arg.name] = self._bound_weight(spec, arg, layer)
                elif arg.role is Role.OUTPUT:
                    fixed[arg.name] = self._output(spec, arg, slot)
                elif arg.role is Role.CACHE:
                    fixed[arg.name] = self.cache_buffer(spec, arg.name, layer)
                elif arg.role is not Role.INPUT:
                    fixed[arg.name] = self._pool(spec, arg)
            self._fixed_sets[key] = fixed
        return self._fixed_sets[key]

    def _bound_weight(self, spec: ElfSpec, arg: ArgSpec, layer: int | None) -> Buffer:
        key = _weight_key(arg, layer)
        buffer = self._weights.get(key)
        if buffer is None:
            # Not preloaded: bind an unwritten buffer, which the device refuses to
            # read (DeviceError naming it) instead of computing on zeros.
            buffer = self._weights[key] = self.device.alloc(arg, key[0])
        return buffer

    def _bound_input(self, spec: ElfSpec, arg: ArgSpec, value: Any) -> tuple[Buffer, int]:
        if isinstance(value, Buffer):  # a producer's output handle: no host round trip
            _check(spec, arg, value.spec.shape, value.spec.np_dtype)
            return value, 0
        _check(spec, arg, value.shape, value.dtype)
        buffer = self._pool(spec, arg)
        if buffer.last_source is value and buffer.written:
            return buffer, 0  # the same host array as last call: bytes unchanged
        return buffer, buffer.write(value)

    def input_buffer(self, spec: ElfSpec, name: str) -> Buffer:
        """The pooled buffer of an input argument, for a host op that writes its result
        there in place (`Buffer.write_with`) and binds the buffer as the input."""
        return self._pool(spec, self._input_args(spec)[name])

    def _pool(self, spec: ElfSpec, arg: ArgSpec) -> Buffer:
        key = (spec.instance, arg.name)
        if key not in self._pooled:
            self._pooled[key] = self.device.alloc(arg, f"{spec.instance}:{arg.name}")
        return self._pooled[key]

    def _output(self, spec: ElfSpec, arg: ArgSpec, slot: int) -> Buffer:
        key = (spec.instance, arg.name)
        if key not in self._outputs:
            self._outputs[key] = [
                self.device.alloc(arg, f"{spec.instance}:{arg.name}#{i}")
                for i in range(OUTPUT_SLOTS)
            ]
        return self._outputs[key][slot]

    def cache_buffer(self, spec: ElfSpec, name: str, layer: int | None) -> Buffer:
        """The buffer of cache argument `name` for `layer`, as the ELF's last call for
        that layer left it."""
        key = (spec.instance, name, layer)
        if key not in self._caches:
            label = f"{spec.instance}:{name}@{layer}"
            self._caches[key] = self.device.alloc(spec.arg(name), label)
        return self._caches[key]

    def all_buffers(self) -> list[Buffer]:
        pools = [b for slots in self._outputs.values() for b in slots]
        return [*self._weights.values(), *self._pooled.values(), *pools,
                *self._caches.values()]  # fmt: skip


def _weight_key(arg: ArgSpec, layer: int | None) -> tuple[str, str, tuple[int, ...], str]:
    """Which buffer holds a weight: its source (the layer filled in), layout, shape and
    dtype (a norm weight is bf16 for an rmsnorm launch, fp32 for a GEMV's prologue)."""
    source = arg.source.format(layer=layer) if arg.per_layer() else arg.source
    return source, arg.layout, arg.shape, arg.dtype


def _check(spec: ElfSpec, arg: ArgSpec, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if tuple(shape) != arg.shape or np.dtype(dtype) != arg.np_dtype:
        raise BindingError(
            f"{spec.instance}: argument {arg.name!r} ({arg.role}) expects "
            f"{arg.dtype}{list(arg.shape)}, got {np.dtype(dtype)}{list(shape)}"
        )
