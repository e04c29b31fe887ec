"""Stand-in `aie.helpers.taplib` (tests only)."""

import math


class TensorAccessPattern:
    """Checks what the shim DMA can do: at most 4 dimensions, inside the buffer."""

    def __init__(self, tensor_dims, offset, sizes, strides):
        if len(sizes) != len(strides) or len(sizes) > 4:
            raise ValueError(f"a shim access pattern has at most 4 dims: {sizes} {strides}")
        last = offset + sum(
            (size - 1) * stride for size, stride in zip(sizes, strides, strict=True)
        )
        if offset < 0 or last >= math.prod(tensor_dims):
            raise ValueError(f"pattern {offset} {sizes} {strides} leaves {tensor_dims}")
        self.tensor_dims, self.offset = tuple(tensor_dims), offset
        self.sizes, self.strides = list(sizes), list(strides)
