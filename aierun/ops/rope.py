"""Rotary position embedding (kernels_src/rope.cc), half-split ("rotate_half") form.

The table row of a position holds cos of the Dh/2 frequencies, then their sin.
Each head's first half x1 and second half x2 become
(x1*cos - x2*sin, x2*cos + x1*sin).
"""

import numpy as np


def rope(params: dict, x: np.ndarray, table: np.ndarray) -> tuple[np.ndarray]:
    rows, heads, dim = x.shape[0], params["heads"], params["head_dim"]
    half = dim // 2
    cos, sin = table[:, None, :half], table[:, None, half:]
    per_head = x.reshape(rows, heads, dim)
    x1, x2 = per_head[..., :half], per_head[..., half:]
    out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return (out.reshape(rows, heads * dim),)
