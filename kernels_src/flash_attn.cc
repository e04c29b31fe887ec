// Causal attention of one (head, query block) with an online softmax
// (aierun/ops/attention.py, aiebuild/designs/flash_attn.py).
// -D AIEK_DH=<head dim>  -D AIEK_BQ=<query rows per block>  -D AIEK_BK=<key rows per block>
// Entry points (suffix <DH>_<BQ>x<BK>), state = State below (the design's fp32 state
// buffer of the same size; its initial value sets the core's first query block and
// its step, see aiebuild/designs/flash_attn.py initial_state):
//   flash_attn_init_*(state)                 start a query block
//   flash_attn_step_*(q, kv, state)          fold in the next key block, kv = [K; V]
//                                            (BK rows each); blocks above the causal
//                                            diagonal are skipped
//   flash_attn_finish_*(state, out, blocks)  out = bf16(acc / sum); the core's next
//                                            query block (back to its first after
//                                            `blocks`: the next KV head)
// The key and query block indices live in the state, so the design's core loops
// stay loops rather than unrolled calls with constant indices.
// Relies on (L): the exp is bf16-precise (so is every softmax weight and rescale
// factor) and the reciprocal is aie_api's scalar inv; (M) for the fp32 rescaling
// products; (R) for the bf16 exps and output.
#include "aie_kernel_common.h"
#include <cmath>

#define AIEK_SUFFIX AIEK_CAT5(AIEK_DH, _, AIEK_BQ, x, AIEK_BK)
static constexpr int LANES = 16;
static_assert(AIEK_DH % LANES == 0 && AIEK_BK % LANES == 0, "blocks must be whole vectors");
// The diagonal block test (c <= r) compares a key row with a query row of the same
// block index: it needs square blocks.
static_assert(AIEK_BQ == AIEK_BK, "the causal mask assumes square blocks");

struct State {
  float acc[AIEK_BQ * AIEK_DH];
  float max[AIEK_BQ];
  float sum[AIEK_BQ];
  int key_block;    // index of the next key block of this query block
  int query_block;  // index of the current query block within its head
  int query_first;  // this core's first query block of a head
  int query_step;   // query blocks between this core's successive ones
};
static_assert(sizeof(State) == (AIEK_BQ * AIEK_DH + 2 * AIEK_BQ + 4) * sizeof(float),
              "State must match the design's state buffer");

static inline float exp_scalar(float v) {  // e^v, bf16-precise, fact (L)
  return exp_bf16<LANES>(aie::broadcast<float, LANES>(v))[0];
}

extern "C" void AIEK_CAT(flash_attn_init_, AIEK_SUFFIX)(State *s) {
  for (int i = 0; i < AIEK_BQ * AIEK_DH; i += LANES)
    aie::store_v(s->acc + i, aie::zeros<float, LANES>());
  for (int r = 0; r < AIEK_BQ; ++r) s->max[r] = -INFINITY, s->sum[r] = 0.0f;
  s->key_block = 0;
}

extern "C" void AIEK_CAT(flash_attn_step_, AIEK_SUFFIX)(const bfloat16 *q, const bfloat16 *kv,
                                                        State *s) {
  const bfloat16 *k = kv, *v = kv + AIEK_BK * AIEK_DH;
  const int key_block = s->key_block++;
  if (key_block > s->query_block) return;  // entirely above the causal diagonal
  set_round_to_nearest_even();              // the exps round to bf16, fact (R)
  const bool diagonal = key_block == s->query_block;
  const float scale = aie::invsqrt(float(AIEK_DH));
  alignas(32) float p[AIEK_BK];
  for (int r = 0; r < AIEK_BQ; ++r) {
    // Keys past the diagonal are masked: never scored, never exponentiated.
    const int visible = diagonal ? r + 1 : AIEK_BK;
    float block_max = -INFINITY;
    for (int c = 0; c < visible; ++c) {
      aie::accum<accfloat, LANES> dot = aie::zeros<accfloat, LANES>();
      for (int d = 0; d < AIEK_DH; d += LANES)
        dot = aie::mac(dot, aie::load_v<LANES>(q + r * AIEK_DH + d),
                       aie::load_v<LANES>(k + c * AIEK_DH + d));
      p[c] = aie::reduce_add(dot.to_vector<float>()) * scale;
      block_max = p[c] > block_max ? p[c] : block_max;
    }
    const float new_max = block_max > s->max[r] ? block_max : s->max[r];
    // The first visible block has no history: rescale 0 instead of exp(-inf).
    const float rescale = s->max[r] == -INFINITY ? 0.0f : exp_scalar(s->max[r] - new_max);
    float row_sum = 0.0f;
    for (int c = 0; c < visible; ++c) row_sum += (p[c] = exp_scalar(p[c] - new_max));
    s->sum[r] = s->sum[r] * rescale + row_sum;
    s->max[r] = new_max;
    for (int d = 0; d < AIEK_DH; d += LANES) {
      aie::accum<accfloat, LANES> out;
      out.from_vector(
          aie::mul(aie::load_v<LANES>(s->acc + r * AIEK_DH + d), rescale).to_vector<float>());
      for (int c = 0; c < visible; ++c)
        out = aie::mac(out, load_f32<LANES>(v + c * AIEK_DH + d), p[c]);
      aie::store_v(s->acc + r * AIEK_DH + d, out.to_vector<float>());
    }
  }
}

extern "C" void AIEK_CAT(flash_attn_finish_, AIEK_SUFFIX)(State *s, bfloat16 *out, int blocks) {
  set_round_to_nearest_even();
  for (int r = 0; r < AIEK_BQ; ++r) {
    const float inverse = aie::inv(s->sum[r]);  // the scalar inv, fact (L)
    for (int d = 0; d < AIEK_DH; d += LANES)
      store_as<LANES>(out + r * AIEK_DH + d,
                      aie::mul(aie::load_v<LANES>(s->acc + r * AIEK_DH + d), inverse)
                          .to_vector<float>());
  }
  s->query_block += s->query_step;
  if (s->query_block >= blocks) s->query_block = s->query_first;  // the next KV head
}
