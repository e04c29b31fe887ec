"""The host's embedding lookup (the CPU op `embed_lookup`), and the prompt's ids
padded to its bucket (`eos_pad`).

The table is read into memory once, at prepare, as the bf16 the checkpoint stores: a
lookup then never faults pages of the checkpoint's memory map in. Rows are gathered
a block at a time into one reused scratch block and widened to fp32 straight into
the caller's array (the device buffer of the first layer's input), so a lookup
allocates nothing however long the prompt.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 256  # rows gathered at a time: the scratch block stays in the CPU cache


class EmbeddingTable:
    def __init__(self, table: np.ndarray):
        self.table = np.array(table)  # a copy in memory, whatever `table` maps
        self._scratch = np.empty((BLOCK_ROWS, self.table.shape[1]), self.table.dtype)

    def lookup(self, ids: np.ndarray, out: np.ndarray) -> None:
        """Write the rows of `ids` into `out` [len(ids), E] (any float dtype)."""
        for start in range(0, len(ids), BLOCK_ROWS):
            block = ids[start : start + BLOCK_ROWS]
            rows = self._scratch[: len(block)]
            np.take(self.table, block, axis=0, out=rows)
            np.copyto(out[start : start + len(block)], rows)


def pad_prompt(ids: list[int], bucket: int, pad_id: int) -> np.ndarray:
    """The prompt's ids filled up to its bucket with `pad_id`."""
    padded = np.full(bucket, pad_id, np.int64)
    padded[: len(ids)] = ids
    return padded
