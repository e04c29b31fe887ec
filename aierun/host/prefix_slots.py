"""Cached prefixes kept aside: the K/V of conversations other than the one the
session holds, so requests that alternate between conversations (several clients of
one server) each find their prefix again instead of prefilling it.

A slot is the token ids it holds and a host copy of their K/V (HeldKV). The cache is an
LRU bounded both by a count and by bytes; what does not fit is dropped, oldest first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from aierun.host.kv_cache import HeldKV, KVCache


@dataclass(frozen=True)
class Slot:
    tokens: tuple[int, ...]
    kv: HeldKV


class PrefixSlots:
    def __init__(self, count: int, max_bytes: int):
        self.count = count
        self.max_bytes = max_bytes
        self._slots: OrderedDict[tuple[int, ...], Slot] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def nbytes(self) -> int:
        return sum(slot.kv.nbytes for slot in self._slots.values())

    def best(self, ids: list[int]) -> tuple[Slot | None, int]:
        """The slot sharing the longest prefix with `ids`, and that length (0: none)."""
        found, longest = None, 0
        for slot in self._slots.values():
            shared = common_prefix(slot.tokens, ids)
            if shared > longest:
                found, longest = slot, shared
        return found, longest

    def take(self, slot: Slot) -> None:
        """Hand `slot` back to the session (it becomes the live cache)."""
        del self._slots[slot.tokens]

    def keep(self, tokens: list[int], kv: KVCache) -> None:
        """Keep `tokens` with the K/V `kv` holds for them (copied), the newest slot."""
        key = tuple(tokens)
        if not key or self.count == 0:
            return
        self._slots.pop(key, None)
        slot = Slot(key, kv.detached(len(key)))
        if slot.kv.nbytes > self.max_bytes:
            return  # larger than the whole budget: keeping it would evict everything
        self._slots[key] = slot
        while len(self._slots) > self.count or self.nbytes > self.max_bytes:
            self._slots.popitem(last=False)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):  # the usual case (a prompt extending a cache), at C speed
        return n
    return next(i for i in range(n) if a[i] != b[i])
