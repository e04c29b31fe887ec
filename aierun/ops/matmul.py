"""GEMM / GEMV (kernels_src/gemm.cc, gemv.cc): y[M,N] = x[M,K] @ w[N,K]^T.

Weights keep the Hugging Face [out, in] layout; products of bf16 operands are
accumulated in fp32 and the tile result is rounded once to bf16. A GEMM whose launch
says `"mma": "bfp16"` (aiebuild/specs.py GEMM_MMA) multiplies the operands as its
BFP16-emulated mmul sees them: blocks of 8 along k sharing an exponent. A GEMV over
GGUF-quantized weights (aierun/ops/quant.py) sums blocks as gemv.cc does.
"""

import numpy as np

from aierun.ops import quant
from aierun.ops.numerics import to_bfp16


def gemm(params: dict, x: np.ndarray, weight: np.ndarray | quant.Blocks) -> tuple[np.ndarray]:
    if isinstance(weight, quant.Blocks):  # a GEMV over quantized weights (M = 1)
        return (quant.gemv(x, weight)[None, :],)
    if params.get("mma") == "bfp16":
        x, weight = to_bfp16(x), to_bfp16(weight)
    # A partitioned weight ([P, rows, K], the LM head) is its rows one after another.
    return (np.asarray(x @ weight.reshape(-1, weight.shape[-1]).T),)
