"""GEMM / GEMV (kernels_src/gemm.cc, gemv.cc): y[M,N] = x[M,K] @ w[N,K]^T.

Weights keep the Hugging Face [out, in] layout; products of bf16 operands are
accumulated in fp32 and the tile result is rounded once to bf16. A GEMM whose launch
says `"mma": "bfp16"` (aiebuild/specs.py GEMM_MMA) multiplies the operands as its
BFP16-emulated mmul sees them: blocks of 8 along k sharing an exponent. A GEMV over
GGUF-quantized weights (aierun/ops/quant.py) sums blocks as gemv.cc does. A GEMV whose
launch says `"epilogue": "swiglu"` reads gate and up rows interleaved (aierun/abi.py)
and writes silu(g) * u.
"""

import numpy as np

from aierun.abi import SWIGLU, SWIGLU_GROUP
from aierun.ops import eltwise, norm, quant
from aierun.ops.numerics import to_bf16, to_bfp16


def gemm(params: dict, x: np.ndarray, weight: np.ndarray | quant.Blocks) -> tuple[np.ndarray]:
    if isinstance(weight, quant.Blocks):  # a GEMV over quantized weights (M = 1)
        return (quant.gemv(x, weight)[None, :],)
    if params.get("mma") == "bfp16":
        x, weight = to_bfp16(x), to_bfp16(weight)
    # A partitioned weight ([P, rows, K], the LM head) is its rows one after another.
    return (np.asarray(x @ weight.reshape(-1, weight.shape[-1]).T),)


def gemv(params: dict, x: np.ndarray, *rest: np.ndarray | quant.Blocks) -> tuple[np.ndarray, ...]:
    """The GEMM's arithmetic at M = 1, one output per weight (a launch may multiply x
    by several, e.g. the Q, K and V projections), with the launch's prologue and
    epilogue (kernels_src/gemv.cc):
    - prologue "rmsnorm" (rest: the norm weight, then the weights): x is the fp32
      residual stream, RMS-normalized and rounded to bf16 first, as an rmsnorm launch
      would write it;
    - prologue "add_rmsnorm" (x is o; rest: x, the norm weight, then the weights): the
      residual add h = o + x first, as an add launch computed it; h is the last output;
    - epilogue "rounded": the rows rounded to bf16, kept as fp32;
    - epilogue "swiglu": each block's gate and up dot products rounded to bf16 first
      (the values two GEMVs would write), then silu_mul on them."""
    weights, sums = list(rest), ()
    if params.get("prologue") == "add_rmsnorm":  # x is o, the next operand x
        x = x + weights.pop(0)
        sums = (x,)
    if params.get("prologue") in ("rmsnorm", "add_rmsnorm"):
        (normed,) = norm.rmsnorm(params, x, weights.pop(0))
        x = to_bf16(normed).astype(np.float32)
    return (*_products(params, x, weights), *sums)


def _products(params: dict, x: np.ndarray, weights: list) -> tuple[np.ndarray, ...]:
    """x times each weight, then the epilogue."""
    if len(weights) > 1:
        return tuple(gemm(params, x, weight)[0] for weight in weights)
    (y,) = gemm(params, x, weights[0])
    if params.get("epilogue") == "rounded":
        return (to_bf16(y).astype(np.float32),)
    if params.get("epilogue") != SWIGLU:
        return (y,)
    pairs = to_bf16(y).astype(np.float32).reshape(-1, 2, SWIGLU_GROUP)
    (a,) = eltwise.silu_mul(params, pairs[:, 0], pairs[:, 1])
    return (a.reshape(1, -1),)
