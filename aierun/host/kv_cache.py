"""The KV cache in device memory: what the host writes into it (a prompt's positions,
each decode position, a kept prefix put back) and the host copies of it that
prefix slots keep. Decode attention itself runs on the device (the launch
`decode_attn` of the decode ELF o_gemv_ffn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aierun.abi import ArgSpec
from aierun.devices.base import Buffer, Device


@dataclass(frozen=True)
class HeldKV:
    """Positions [0, length) of every layer's cache, in host memory that owns them
    ([layers, Hkv, 2, length, Dh], the cache's dtype): a cached prefix kept aside."""

    values: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.values.nbytes


class KVCache:
    """Per layer one device buffer, the decode ELF's `kv_cache` argument
    [Hkv, 2, C, Dh] (per KV head its keys then its values, positions together, as
    the decode kernel streams them). Positions are valid up to where the host last
    wrote them; each decode call passes its own length, so nothing is erased when a
    shorter prefix is reused: every later position is stored before it is read."""

    def __init__(self, buffers: list[Buffer]):
        self.buffers = buffers

    @classmethod
    def allocate(cls, device: Device, arg: ArgSpec, layers: int) -> KVCache:
        return cls([device.alloc(arg, f"{arg.name}@{layer}") for layer in range(layers)])

    @property
    def capacity(self) -> int:
        """Positions each layer's buffer holds (the decode ELF's compiled context)."""
        return self.buffers[0].spec.shape[2]

    def keep_prompt(
        self, layer: int, k: np.ndarray, v: np.ndarray, length: int, start: int = 0
    ) -> None:
        """Positions [start, start + length) from rows [0, length) of k, v
        [Hkv, >= length, Dh] (the prefill ELF's cache buffers, widened and placed per
        head by its kv_store launch; `start` > 0 for a later chunk of a prompt)."""
        buffer, stop = self.buffers[layer], start + length  # fp32 of bf16: narrowed exactly
        np.copyto(buffer.host[:, 0, start:stop], k[:, :length], "unsafe")
        np.copyto(buffer.host[:, 1, start:stop], v[:, :length], "unsafe")
        self._synced(buffer, start, stop)

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Positions [start, start + len(k)) from rows [rows, Hkv*Dh] (the decode ELF
        rms_gemv_rope's outputs)."""
        buffer, stop = self.buffers[layer], start + len(k)
        heads, _, _, dim = buffer.spec.shape
        # [2, rows, Hkv, Dh] -> [Hkv, 2, rows, Dh]
        rows = np.stack((k, v)).reshape(2, len(k), heads, dim).transpose(2, 0, 1, 3)
        np.copyto(buffer.host[:, :, start:stop], rows, "unsafe")  # one copy: host work per step
        self._synced(buffer, start, stop)

    def detached(self, length: int) -> HeldKV:
        """A host copy of positions [0, length) of every layer."""
        for buffer in self.buffers:
            buffer.sync_from_device()
        return HeldKV(np.stack([buffer.host[:, :, :length] for buffer in self.buffers]))

    def restore(self, held: HeldKV) -> None:
        """Put a kept prefix back at positions [0, its length)."""
        length = held.values.shape[3]
        for buffer, values in zip(self.buffers, held.values, strict=True):
            np.copyto(buffer.host[:, :, :length], values)
            self._synced(buffer, 0, length)

    @staticmethod
    def _synced(buffer: Buffer, start: int, stop: int) -> None:
        """Push positions [start, stop) of every (head, kind) row to the device."""
        heads, kinds, context, dim = buffer.spec.shape
        row, size = dim * buffer.spec.np_dtype.itemsize, (stop - start)
        for stretch in range(heads * kinds):
            buffer.sync_range_to_device((stretch * context + start) * row, size * row)
        buffer.written = True
