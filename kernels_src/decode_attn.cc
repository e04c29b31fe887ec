// One decode step's attention for one KV head's group of query heads, with an online
// softmax over the cached key blocks (aierun/ops/decode_attn.py,
// aiebuild/ops/decode_attn.py).
// -D AIEK_DH=<head dim>  -D AIEK_G=<query heads per KV head>  -D AIEK_BK=<keys per block>
// Entry points (suffix <DH>_<G>x<BK>), state = State below (the design's fp32 buffer):
//   decode_attn_init_*(q, state)        start a KV head: q = its G query rows (fp32,
//                                       widened by the host), then the number of
//                                       positions to attend (as a float) at q[G*DH]
//   decode_attn_step_*(q, kv, state)    fold in the next key block, kv = [K; V] (BK
//                                       bf16 rows each); a block wholly at or past the
//                                       length is skipped, a partial one is cut
//   decode_attn_finish_*(state, out)    out = bf16(acc / sum), G rows of DH
// The length arrives with the queries, in the host-written object, so it changes per
// call while the design's loops (every block of the compiled context) stay fixed.
//
// The queries, keys and values are bf16 values (the projections write bf16; the host
// widened the queries exactly), so init keeps the queries as bf16 and the scores and
// P V are bf16 x bf16 products accumulated in fp32 (B), exact per product, then a lane
// reduction (S); the exps are bf16-precise (L) and round to nearest even (R), as
// flash_attn.cc's, so every weight P is a bf16 value and enters P V exactly.
#include "aie_kernel_common.h"
#include <cmath>

#define AIEK_SUFFIX AIEK_CAT5(AIEK_DH, _, AIEK_G, x, AIEK_BK)
static constexpr int LANES = 16;  // fp32 vectors
static constexpr int WIDE = 32;   // bf16 operands and their fp32 accumulators
static constexpr int ROWS = AIEK_G * AIEK_DH;  // the group's query (and output) elements
static_assert(AIEK_DH % WIDE == 0 && AIEK_BK % LANES == 0,
              "the head dim and the key block must hold whole vectors");
using Vec = aie::vector<float, LANES>;
using Acc = aie::accum<accfloat, WIDE>;

struct State {
  bfloat16 q[ROWS];  // the group's queries (first: 512-bit aligned for its loads)
  float acc[ROWS];
  float max[AIEK_G];
  float sum[AIEK_G];
  int key_block;  // index of the next key block
  int length;     // positions to attend, from the queries object
};
static_assert(sizeof(State) == (ROWS / 2 + ROWS + 2 * AIEK_G + 2) * sizeof(float),
              "State must match the design's state buffer");

extern "C" void AIEK_CAT(decode_attn_init_, AIEK_SUFFIX)(const float *q, State *s) {
  set_round_to_nearest_even();  // exact either way: the queries are bf16 values
  for (int i = 0; i < ROWS; i += LANES) store_as<LANES>(s->q + i, aie::load_v<LANES>(q + i));
  for (int i = 0; i < ROWS; i += LANES) aie::store_v(s->acc + i, aie::zeros<float, LANES>());
  for (int g = 0; g < AIEK_G; ++g) s->max[g] = -INFINITY, s->sum[g] = 0.0f;
  s->key_block = 0;
  s->length = int(q[ROWS]);
}

// q . k over one head's dims: bf16 products accumulated per lane in fp32, then reduced.
static inline float dot(const bfloat16 *q, const bfloat16 *k) {
  Acc sum = aie::mul(aie::load_v<WIDE>(q), aie::load_v<WIDE>(k));
  for (int d = WIDE; d < AIEK_DH; d += WIDE)
    sum = aie::mac(sum, aie::load_v<WIDE>(q + d), aie::load_v<WIDE>(k + d));
  return aie::reduce_add(sum.to_vector<float>());
}

// Fold keys [0, keys) of the block into query head g's running max, sum and acc.
static void fold_head(const bfloat16 *q, const bfloat16 *k, const bfloat16 *v, State *s,
                      int g, int keys) {
  const float scale = aie::invsqrt(float(AIEK_DH));
  alignas(64) float scores[AIEK_BK];
  for (int j = 0; j < AIEK_BK; ++j)
    scores[j] = j < keys ? dot(q, k + j * AIEK_DH) * scale : -INFINITY;
  Vec block_max = aie::broadcast<float, LANES>(-INFINITY);
  for (int j = 0; j < AIEK_BK; j += LANES)
    block_max = aie::max(block_max, aie::load_v<LANES>(scores + j));
  const float seen = aie::reduce_max(block_max);
  const float new_max = seen > s->max[g] ? seen : s->max[g];
  const Vec row_max = aie::broadcast<float, LANES>(new_max);
  // exp(old max - new max); 0 before the first block (acc and sum are 0 then).
  const float rescale =
      s->key_block == 1 ? 0.0f : exp_bf16(aie::sub(aie::broadcast<float, LANES>(s->max[g]), row_max))[0];
  alignas(64) bfloat16 weights[AIEK_BK];
  aie::accum<accfloat, LANES> sums = aie::zeros<accfloat, LANES>();
  for (int j = 0; j < AIEK_BK; j += LANES) {
    // Cut keys weigh 0 (their -inf scores are not left to exp2).
    const int visible = keys - j;
    const unsigned bits = visible <= 0 ? 0u : visible >= LANES ? 0xFFFFu : (1u << visible) - 1;
    const auto w = aie::select(bfloat16(0.0f),
                               exp_to_bf16(aie::sub(aie::load_v<LANES>(scores + j), row_max)),
                               aie::mask<LANES>::from_uint32(bits));
    aie::store_v(weights + j, w);
    sums = aie::add(sums, w);
  }
  s->sum[g] = s->sum[g] * rescale + aie::reduce_add(sums.to_vector<float>());
  s->max[g] = new_max;
  float *acc = s->acc + g * AIEK_DH;
  for (int d = 0; d < AIEK_DH; d += WIDE) {
    Acc out = aie::mul(aie::load_v<WIDE>(acc + d), rescale);
    for (int j = 0; j < keys; ++j)
      out = aie::mac(out, aie::load_v<WIDE>(v + j * AIEK_DH + d), weights[j]);
    aie::store_v(acc + d, out.to_vector<float>());
  }
}

extern "C" void AIEK_CAT(decode_attn_step_, AIEK_SUFFIX)(const float *q, const bfloat16 *kv,
                                                         State *s) {
  const int first = s->key_block++ * AIEK_BK;
  if (first >= s->length) return;  // past the cached positions
  set_round_to_nearest_even();      // the exps round to bf16, fact (R)
  const int keys = s->length - first < AIEK_BK ? s->length - first : AIEK_BK;
  const bfloat16 *k = kv, *v = kv + AIEK_BK * AIEK_DH;
  for (int g = 0; g < AIEK_G; ++g) fold_head(s->q + g * AIEK_DH, k, v, s, g, keys);
}

extern "C" void AIEK_CAT(decode_attn_finish_, AIEK_SUFFIX)(State *s, bfloat16 *out) {
  set_round_to_nearest_even();
  for (int g = 0; g < AIEK_G; ++g) {
    // The scalar inv, fact (L); nothing attended (length 0) gives zeros.
    const float inverse = s->sum[g] > 0.0f ? aie::inv(s->sum[g]) : 0.0f;
    for (int d = 0; d < AIEK_DH; d += LANES)
      store_as<LANES>(out + g * AIEK_DH + d,
                      aie::mul(aie::load_v<LANES>(s->acc + g * AIEK_DH + d), inverse)
                          .to_vector<float>());
  }
}
