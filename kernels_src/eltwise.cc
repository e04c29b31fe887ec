// Elementwise kernels over AIEK_CHUNK elements (aierun/ops/eltwise.py):
//   add_<a>_<b>_<c>_<CHUNK>(a, b, c):       c = a + b   (the residual add, fp32 stream)
//   silu_mul_<a>_<b>_<c>_<CHUNK>(g, u, c):  c = g / (1 + exp(-g)) * u
// -D AIEK_CHUNK=<elements>
// -D AIEK_A_F32 / AIEK_B_F32 / AIEK_C_F32=<1: that operand is fp32, else bf16>
// Relies on (R) for bf16 results and the bf16 exp, (M) for the products, (L) for the
// bf16-precise exp and the reciprocal.
#include "aie_kernel_common.h"

#if AIEK_A_F32
using a_t = float;
#define AIEK_A_TAG f32
#else
using a_t = bfloat16;
#define AIEK_A_TAG bf16
#endif
#if AIEK_B_F32
using b_t = float;
#define AIEK_B_TAG f32
#else
using b_t = bfloat16;
#define AIEK_B_TAG bf16
#endif
#if AIEK_C_F32
using c_t = float;
#define AIEK_C_TAG f32
#else
using c_t = bfloat16;
#define AIEK_C_TAG bf16
#endif

#define AIEK_TYPES AIEK_CAT5(AIEK_A_TAG, _, AIEK_B_TAG, _, AIEK_C_TAG)
// Elements per vector step; aiebuild/ops/eltwise.py LANES checks chunks against it.
static constexpr int LANES = 16;
static_assert(AIEK_CHUNK % LANES == 0, "AIEK_CHUNK must be a multiple of 16");

extern "C" void AIEK_CAT5(add_, AIEK_TYPES, _, AIEK_CHUNK, )(const a_t *a, const b_t *b, c_t *c) {
  set_round_to_nearest_even();
  for (int i = 0; i < AIEK_CHUNK; i += LANES)
    store_as<LANES>(c + i, aie::add(load_f32<LANES>(a + i), load_f32<LANES>(b + i)));
}

extern "C" void AIEK_CAT5(silu_mul_, AIEK_TYPES, _, AIEK_CHUNK, )(const a_t *g, const b_t *u,
                                                                   c_t *c) {
  set_round_to_nearest_even();
  const aie::vector<float, LANES> one = aie::broadcast<float, LANES>(1.0f);
  for (int i = 0; i < AIEK_CHUNK; i += LANES)  // aie_kernel_common.h silu_mul
    store_as<LANES>(c + i, silu_mul(load_f32<LANES>(g + i), load_f32<LANES>(u + i), one));
}
