"""Rotary position embedding (kernels_src/rope.cc), half-split ("rotate_half") form.

The table row of a position holds cos of the Dh/2 frequencies, then their sin.
Each head's first half x1 and second half x2 become
(x1*cos - x2*sin, x2*cos + x1*sin).
"""

import numpy as np


def rope(params: dict, *tensors: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each tensor [rows, heads * Dh] rotated by the table [rows, Dh], the last operand;
    `heads` is one count, or one per tensor."""
    *xs, table = tensors
    heads = params["heads"] if isinstance(params["heads"], list | tuple) else [params["heads"]]
    return tuple(_rotated(x, table, h, params["head_dim"]) for x, h in zip(xs, heads, strict=True))


def _rotated(x: np.ndarray, table: np.ndarray, heads: int, dim: int) -> np.ndarray:
    rows, half = x.shape[0], dim // 2
    cos, sin = table[:, None, :half], table[:, None, half:]
    per_head = x.reshape(rows, heads, dim)
    x1, x2 = per_head[..., :half], per_head[..., half:]
    out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.reshape(rows, heads * dim)
