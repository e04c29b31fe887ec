"""The op vocabulary of launches, emulated with numpy for the `emu` device.

Each module emulates one NPU kernel (its C++ source sits in kernels_src/ under the
same name, its IRON design in aiebuild/ops/). The emulation follows the
device's dataflow: operands arrive as bf16 from DDR, arithmetic accumulates in
fp32, and the result is rounded to bf16 where the kernel writes it back to DDR.
Our kernels set the rounding mode to round-to-nearest-even before converting
(the AIE2P default would be toward minus infinity); `to_bf16` does the same.
"""

from collections.abc import Callable

import numpy as np

from aierun.ops import attention, decode_attn, eltwise, kv_store, matmul, norm, rope

# op name -> emulation(params, *inputs as float32) -> outputs as float32 (pre-rounding)
OpFn = Callable[..., tuple[np.ndarray, ...]]

OPS: dict[str, OpFn] = {
    "rmsnorm": norm.rmsnorm,
    "gemm": matmul.gemm,
    "gemv": matmul.gemv,  # the GEMM's arithmetic at M = 1, and its epilogue
    "rope": rope.rope,
    "flash_attn": attention.flash_attn,
    "add": eltwise.add,
    "silu_mul": eltwise.silu_mul,
    "kv_store": kv_store.kv_store,
    "decode_attn": decode_attn.decode_attn,
    "bias": eltwise.add,  # the row broadcasts over the rows, as the kernel adds it per row
}
