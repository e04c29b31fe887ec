"""GEMM / GEMV (kernels_src/gemm.cc, gemv.cc): y[M,N] = x[M,K] @ w[N,K]^T.

Weights keep the Hugging Face [out, in] layout; products of bf16 operands are
accumulated in fp32 and the tile result is rounded once to bf16.
"""

import numpy as np


def gemm(params: dict, x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray]:
    # A partitioned weight ([P, rows, K], the LM head) is its rows one after another.
    return (x @ weight.reshape(-1, weight.shape[-1]).T,)
