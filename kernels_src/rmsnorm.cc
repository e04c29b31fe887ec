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

static constexpr int LANES = 16;
static_assert(AIEK_E % LANES == 0, "the row length must be a multiple of 16");

extern "C" void AIEK_CAT5(rmsnorm_, AIEK_X_TAG, _, AIEK_E, )(const x_t *x, const bfloat16 *w,
                                                              bfloat16 *y) {
  set_round_to_nearest_even();
  aie::accum<accfloat, LANES> squares = aie::zeros<accfloat, LANES>();
  for (int i = 0; i < AIEK_E; i += LANES) {
    aie::vector<float, LANES> v = load_f32<LANES>(x + i);
    squares = aie::mac(squares, v, v);  // per-lane partial sums, fact (S)
  }
  const float mean = aie::reduce_add(squares.to_vector<float>()) / float(AIEK_E);
  const float scale = aie::invsqrt(mean + AIEK_EPS);
  for (int i = 0; i < AIEK_E; i += LANES) {
    aie::vector<float, LANES> v = aie::mul(load_f32<LANES>(x + i), scale).to_vector<float>();
    store_as<LANES>(y + i, aie::mul(v, load_f32<LANES>(w + i)).to_vector<float>());
  }
}
