"""How `doit simulate` compares an output of the simulated array with emu's: the
differences it measures (`compare`) and the bounds an op allows (`Tolerance`, given by
each op in aiebuild/ops).

The kernels' arithmetic is not emu's in documented ways (kernels_src/aie_kernel_common.h;
docs/hardware.md, "Stack H. AIE2P arithmetic"): fp32 sums in the vector lanes' order
instead of numpy's pairwise / BLAS order, bf16-precise table exp in softmax and SiLU, the
AIE2P rounding modes. Per output, the bound is on the cosine and on the error relative
to the output's own scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Diff:
    max_abs: float
    max_ulp: float  # in units of the bf16 spacing at emu's value
    cosine: float
    scale: float  # the largest |emu| value
    nonfinite: int  # elements the model left NaN / inf where emu has numbers


def bf16_spacing(values: np.ndarray) -> np.ndarray:
    """The distance between neighbouring bf16 numbers at |values| (8 significant bits);
    the smallest normal's spacing for zero."""
    tiny = np.finfo(np.float32).tiny
    _, exponent = np.frexp(np.maximum(np.abs(values), tiny))
    return np.ldexp(np.float32(1), exponent - 8)


def compare(sim: np.ndarray, emu: np.ndarray) -> Diff:
    ours, theirs = sim.astype(np.float32).ravel(), emu.astype(np.float32).ravel()
    finite = np.isfinite(ours)
    nonfinite = int((~finite & np.isfinite(theirs)).sum())
    ours = np.where(finite, ours, 0)
    error = np.abs(ours - theirs)
    norms = float(np.linalg.norm(ours) * np.linalg.norm(theirs))
    cosine = float(ours @ theirs) / norms if norms else float(np.array_equal(ours, theirs))
    return Diff(
        max_abs=float(error.max(initial=0)),
        max_ulp=float((error / bf16_spacing(theirs)).max(initial=0)),
        cosine=cosine,
        scale=float(np.abs(theirs).max(initial=0)),
        nonfinite=nonfinite,
    )


@dataclass(frozen=True)
class Tolerance:
    """An output passes when it has no NaN / inf emu does not have, its cosine with
    emu's is at least `cosine`, and every element is within `relative` x the output's
    largest |value| of emu's. Relative to the scale, not per element: a sum of
    products that cancels to near zero legitimately differs in many bf16 ULPs when
    the order of the fp32 sum changes, so a per-element ULP bound would be either
    loose or wrong; the ULP column is reported to show where the ulps sit."""

    cosine: float
    relative: float

    def problem(self, diff: Diff) -> str | None:
        if diff.scale == 0:  # all zeros proves nothing: a call on real data must be taken
            return "emu's output is all zeros: the comparison would prove nothing"
        if diff.nonfinite:
            return f"{diff.nonfinite} elements NaN or inf"
        if not diff.cosine >= self.cosine:
            return f"cosine {diff.cosine:.6f} < {self.cosine}"
        if diff.max_abs > self.relative * max(diff.scale, np.finfo(np.float32).tiny):
            return f"max abs diff {diff.max_abs:.4g} > {self.relative} x {diff.scale:.4g}"
        return None


# Measured on the default model (buckets 64 and 256): the worst error is 0.33 % of
# the output's scale (flash attention at 256, its online softmax against emu's one
# normalization), 0.19 % elsewhere (the fp32 residual after o_ffn's chain of eight
# launches: each bf16 intermediate a gemm sums in another order may land one bf16
# step, 2^-8 relative, away), cosines above 1 - 2e-7. The bound leaves room for
# longer sums (Llama-3.2-1B's K = 8192) and bigger buckets: 2^-6 of the scale (four
# bf16 steps), cosine 0.99999.
DEFAULT_TOLERANCE = Tolerance(cosine=0.99999, relative=2**-6)
