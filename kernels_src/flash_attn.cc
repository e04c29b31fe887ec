// Causal attention of one (head, query block) with an online softmax
// (aierun/ops/attention.py, aiebuild/designs/flash_attn.py).
// -D DH=<head dim>  -D BQ=<query rows per block>  -D BK=<key rows per block>
// Entry points (suffix <DH>_<BQ>x<BK>), state = fp32 [acc BQ*DH | max BQ | sum BQ | step]:
//   flash_attn_init_*(state)                          start a query block
//   flash_attn_step_*(q, k, v, state, query_block)    fold in the next key block; blocks
//                                                     above the causal diagonal are skipped
//   flash_attn_finish_*(state, out)                   out = bf16(acc / sum)
// Relies on (L): exp and the reciprocal are the table-based ones, so the softmax is
// not libm's; (M) for the fp32 rescaling products; (R) for the bf16 output.
#include "aie_kernel_common.h"
#include <cmath>

#define SUFFIX AIE_CAT5(DH, _, BQ, x, BK)
static constexpr int LANES = 16;
static_assert(DH % LANES == 0 && BK % LANES == 0, "blocks must be whole vectors");

struct State {
  float acc[BQ * DH];
  float max[BQ];
  float sum[BQ];
  float step;  // index of the next key block
};

static inline float exp_table(float v) {  // e^v through the table-based exp2, fact (L)
  return aie::exp2<float>(aie::broadcast<float, LANES>(v * 1.4426950408889634f))[0];
}

extern "C" void AIE_CAT(flash_attn_init_, SUFFIX)(State *s) {
  for (int i = 0; i < BQ * DH; i += LANES) aie::store_v(s->acc + i, aie::zeros<float, LANES>());
  for (int r = 0; r < BQ; ++r) s->max[r] = -INFINITY, s->sum[r] = 0.0f;
  s->step = 0.0f;
}

extern "C" void AIE_CAT(flash_attn_step_, SUFFIX)(const bfloat16 *q, const bfloat16 *k,
                                                  const bfloat16 *v, State *s, int query_block) {
  const int key_block = int(s->step);
  s->step += 1.0f;
  if (key_block > query_block) return;  // entirely above the causal diagonal
  const float scale = aie::invsqrt(float(DH));
  alignas(32) float p[BK];
  for (int r = 0; r < BQ; ++r) {
    float block_max = -INFINITY;
    for (int c = 0; c < BK; ++c) {
      aie::accum<accfloat, LANES> dot = aie::zeros<accfloat, LANES>();
      for (int d = 0; d < DH; d += LANES)
        dot = aie::mac(dot, aie::load_v<LANES>(q + r * DH + d), aie::load_v<LANES>(k + c * DH + d));
      const bool visible = key_block < query_block || c <= r;
      p[c] = visible ? aie::reduce_add(dot.to_vector<float>()) * scale : -INFINITY;
      block_max = p[c] > block_max ? p[c] : block_max;
    }
    const float new_max = block_max > s->max[r] ? block_max : s->max[r];
    const float rescale = exp_table(s->max[r] - new_max);
    float row_sum = 0.0f;
    for (int c = 0; c < BK; ++c) row_sum += (p[c] = exp_table(p[c] - new_max));
    s->sum[r] = s->sum[r] * rescale + row_sum;
    s->max[r] = new_max;
    for (int d = 0; d < DH; d += LANES) {
      aie::accum<accfloat, LANES> out;
      out.from_vector(aie::mul(aie::load_v<LANES>(s->acc + r * DH + d), rescale).to_vector<float>());
      for (int c = 0; c < BK; ++c) out = aie::mac(out, load_f32<LANES>(v + c * DH + d), p[c]);
      aie::store_v(s->acc + r * DH + d, out.to_vector<float>());
    }
  }
}

extern "C" void AIE_CAT(flash_attn_finish_, SUFFIX)(const State *s, bfloat16 *out) {
  set_round_to_nearest_even();
  for (int r = 0; r < BQ; ++r) {
    const float inverse = aie::inv(s->sum[r]);  // table-based reciprocal, fact (L)
    for (int d = 0; d < DH; d += LANES)
      store_as<LANES>(out + r * DH + d,
                      aie::mul(aie::load_v<LANES>(s->acc + r * DH + d), inverse).to_vector<float>());
  }
}
