// RMSNorm of one row: y = x / sqrt(mean(x^2) + EPS) * w  (aierun/ops/norm.py).
// -D AIEK_E=<row length>  -D AIEK_EPS=<float literal>
// -D AIEK_X_F32=<1: x is the fp32 residual stream>
// Entry point: rmsnorm_<bf16|f32>_<E>(x[E], w[E] bf16, y[E] bf16).
// Relies on facts (R) for the bf16 output, (M) for x*scale*w, (S) for the sum of squares.
#include "aie_kernel_common.h"

#if AIEK_X_F32
using x_t = float;
#define AIEK_X_TAG f32
#else
using x_t = bfloat16;
#define AIEK_X_TAG bf16
#endif

extern "C" void AIEK_CAT5(rmsnorm_, AIEK_X_TAG, _, AIEK_E, )(const x_t *x, const bfloat16 *w,
                                                              bfloat16 *y) {
  set_round_to_nearest_even();
  rms_normalize<AIEK_E>(x, w, y, AIEK_EPS);
}
