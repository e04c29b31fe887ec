// Rotary embedding of one row of HEADS heads, half-split form (aierun/ops/rope.py):
// per head, x1 = x[:DH/2], x2 = x[DH/2:] -> (x1*cos - x2*sin, x2*cos + x1*sin), with
// the table row holding cos of the DH/2 frequencies, then their sin.
// -D AIEK_HEADS=<heads>  -D AIEK_DH=<head dim>  -D AIEK_TABLE_F32=<1: the table is fp32>
// Entry point: rope_<bf16|f32>_<HEADS>x<DH>(x[HEADS*DH] bf16, table[DH], y[HEADS*DH] bf16).
// Relies on (R) for the bf16 output and (M) for the fp32 products with the table.
#include "aie_kernel_common.h"

#if AIEK_TABLE_F32
using t_t = float;
#define AIEK_T_TAG f32
#else
using t_t = bfloat16;
#define AIEK_T_TAG bf16
#endif

static constexpr int LANES = 16;
static constexpr int HALF = AIEK_DH / 2;
static_assert(HALF % LANES == 0, "DH/2 must be a multiple of 16");

extern "C" void AIEK_CAT5(rope_, AIEK_T_TAG, _, AIEK_CAT3(AIEK_HEADS, x, AIEK_DH), )(
    const bfloat16 *x, const t_t *table, bfloat16 *y) {
  set_round_to_nearest_even();
  for (int h = 0; h < AIEK_HEADS; ++h) {
    const bfloat16 *in = x + h * AIEK_DH;
    bfloat16 *out = y + h * AIEK_DH;
    for (int i = 0; i < HALF; i += LANES) {
      auto cos = load_f32<LANES>(table + i), sin = load_f32<LANES>(table + HALF + i);
      auto x1 = load_f32<LANES>(in + i), x2 = load_f32<LANES>(in + HALF + i);
      auto first = aie::msc(aie::mul(x1, cos), x2, sin).to_vector<float>();
      auto second = aie::mac(aie::mul(x2, cos), x1, sin).to_vector<float>();
      store_as<LANES>(out + i, first);
      store_as<LANES>(out + HALF + i, second);
    }
  }
}
