// Causal attention of one (head, query block) with an online softmax
// (aierun/ops/attention.py, aiebuild/ops/flash_attn.py).
// -D AIEK_DH=<head dim>  -D AIEK_BQ=<query rows per block>  -D AIEK_BK=<key rows per block>
// Entry points (suffix <DH>_<BQ>x<BK>), state = State below (the design's fp32 state
// buffer of the same size; its initial value sets the core's first query block, its
// step and its head in the queries object, see aiebuild/ops/flash_attn.py
// initial_state):
//   flash_attn_init_*(state)                 start a query block
//   flash_attn_step_*(q, kv, state)          fold in the next key block, kv = [K; V]
//                                            (BK rows each), q = the query blocks of
//                                            the column's heads, BQ rows each (this
//                                            core's is q[state.query_head]); blocks
//                                            above the causal diagonal are skipped
//   flash_attn_finish_*(state, out, blocks)  out = bf16(acc / sum); the core's next
//                                            query block (back to its first after
//                                            `blocks`: the next KV head)
// The key and query block indices live in the state, so the design's core loops
// stay loops rather than unrolled calls with constant indices.
//
// A step first writes the key block's K^T operands into the state (once per block, not
// once per strip), then works on strips of MR query rows: S = Q K^T and O += P V are
// bf16 mmul blocks
// with fp32 accumulation (B), the online softmax between them is fp32 per row.
// Relies on (B); (L): the exp is bf16-precise, so every softmax weight P is a bf16
// value already and P enters the P V mmul exactly, as does every rescale factor; the
// reciprocal is aie_api's scalar inv; (M) for the fp32 scaling and rescaling products;
// (R) for the bf16 exps and output.
#include "aie_kernel_common.h"
#include <cmath>

#define AIEK_SUFFIX AIEK_CAT5(AIEK_DH, _, AIEK_BQ, x, AIEK_BK)
static constexpr int LANES = 16;
static constexpr int MR = 4, MS = 8, MT = 8;  // the AIE2P bf16 mmul shape (as gemm.cc)
using MMUL = aie::mmul<MR, MS, MT, bfloat16, bfloat16, accauto>;
// A 4 x 8 block of scores, weights or outputs: MR query rows, MT keys or head dims.
using Block = aie::vector<float, MR * MT>;
using Weights = aie::vector<bfloat16, MR * MT>;
static constexpr int KEY_GROUPS = AIEK_BK / MT;
static_assert(AIEK_BQ % MR == 0 && AIEK_BK % MT == 0 && AIEK_DH % MS == 0 &&
                  AIEK_DH % LANES == 0 && AIEK_BQ * AIEK_DH % LANES == 0,
              "blocks must hold whole mmul blocks and vectors");
// The diagonal block test compares a key row with a query row of the same block
// index: it needs square blocks.
static_assert(AIEK_BQ == AIEK_BK, "the causal mask assumes square blocks");
// A block of weights (MT keys) is the next mmul's A operand (MS keys).
static_assert(MS == MT, "the P V mmul takes the Q K^T blocks' keys as its depth");
// A strip's scores and weights live in registers or spill to the core's stack, 1 KiB
// unless the design sets another (docs/hardware.md sections 2 and 9): they may take 3/4 of it.
static_assert(KEY_GROUPS * (sizeof(Block) + sizeof(Weights)) <= 768,
              "a strip's scores and weights must leave room for the calls in a 1 KiB stack");

static constexpr int KT_BLOCK = MS * MT;  // elements of one K^T operand
struct State {
  // The current key block's K^T operands, MT keys by MS head dims each, in the order
  // (key group, head dims / MS); first, so each is 512-bit aligned for its loads.
  bfloat16 keys_t[AIEK_BK * AIEK_DH];
  float acc[AIEK_BQ * AIEK_DH];
  float max[AIEK_BQ];
  float sum[AIEK_BQ];
  int key_block;    // index of the next key block of this query block
  int query_block;  // index of the current query block within its head
  int query_first;  // this core's first query block of a head
  int query_step;   // query blocks between this core's successive ones
  int query_head;   // this core's block in the queries object it shares
};
static_assert(sizeof(State) ==
                  (AIEK_BK * AIEK_DH / 2 + AIEK_BQ * AIEK_DH + 2 * AIEK_BQ + 5) * sizeof(float),
              "State must match the design's state buffer");

extern "C" void AIEK_CAT(flash_attn_init_, AIEK_SUFFIX)(State *s) {
  for (int i = 0; i < AIEK_BQ * AIEK_DH; i += LANES)
    aie::store_v(s->acc + i, aie::zeros<float, LANES>());
  for (int r = 0; r < AIEK_BQ; ++r) s->max[r] = -INFINITY, s->sum[r] = 0.0f;
  s->key_block = 0;
}

// A block whose row r holds values[r] in all its lanes.
static inline Block per_row(const float *values) {
  Block block;
  for (int r = 0; r < MR; ++r) block.insert(r, aie::broadcast<float, MT>(values[r]));
  return block;
}

// The lanes (r, c) of the block at query row `row` and key `key` of a diagonal block
// whose key is visible to its query: key + c <= row + r.
static inline aie::mask<MR * MT> causal_mask(int row, int key) {
  unsigned bits = 0;
  for (int r = 0; r < MR; ++r) {
    const int visible = row + r - key + 1;  // keys of the block's row r, clamped below
    const unsigned lanes = visible <= 0 ? 0u : visible >= MT ? 0xFFu : (1u << visible) - 1;
    bits |= lanes << (r * MT);
  }
  return aie::mask<MR * MT>::from_uint32(bits);
}

// The key block's K^T operands: per key group and MS head dims, the MT keys' rows
// transposed into an MS x MT operand.
static void transpose_keys(const bfloat16 *k, bfloat16 *keys_t) {
  for (int g = 0; g < KEY_GROUPS; ++g)
    for (int d = 0; d < AIEK_DH; d += MS, keys_t += KT_BLOCK)
      aie::store_v(keys_t,
                   aie::transpose(load_block<MT, MS>(k + g * MT * AIEK_DH + d, AIEK_DH), MT, MS));
}

// The scaled scores Q K^T of the strip's MR query rows q against the MT keys whose
// K^T operands start at keys_t.
static inline Block strip_scores(const bfloat16 *q, const bfloat16 *keys_t, float scale) {
  MMUL dot;
  dot.mul(load_block<MR, MS>(q, AIEK_DH), aie::load_v<KT_BLOCK>(keys_t));
  for (int d = MS; d < AIEK_DH; d += MS)
    dot.mac(load_block<MR, MS>(q + d, AIEK_DH), aie::load_v<KT_BLOCK>(keys_t += KT_BLOCK));
  return aie::mul(dot.to_vector<float>(), scale).to_vector<float>();
}

// Fold `groups` key groups of the block into the strip of MR query rows at `row`: its
// running max and sum and its rows of acc. `first`: the strip has seen no keys yet.
static void fold_strip(const bfloat16 *q, const bfloat16 *v, State *s,
                       int row, int groups, bool diagonal, bool first) {
  const float scale = aie::invsqrt(float(AIEK_DH));
  Block scores[KEY_GROUPS];
  Block block_max = aie::broadcast<float, MR * MT>(-INFINITY);
  for (int g = 0; g < groups; ++g) {
    scores[g] = strip_scores(q, s->keys_t + g * AIEK_DH * MT, scale);
    if (diagonal) scores[g] = aie::select(-INFINITY, scores[g], causal_mask(row, g * MT));
    block_max = aie::max(block_max, scores[g]);
  }
  float new_max[MR];  // init's -inf before the first block
  for (int r = 0; r < MR; ++r) {
    const float seen = aie::reduce_max(block_max.extract<MT>(r));
    new_max[r] = seen > s->max[row + r] ? seen : s->max[row + r];
  }
  const Block row_max = per_row(new_max);
  // exp(old max - new max) per row; 0 when nothing was seen (acc and sum are 0 then).
  const Block rescale =
      first ? aie::zeros<float, MR * MT>() : exp_bf16(aie::sub(per_row(s->max + row), row_max));

  // P = exp(S - max) as bf16 (its exact value, fact L); masked keys weigh 0 (their
  // -inf scores are not left to exp2).
  Weights weights[KEY_GROUPS];
  aie::accum<accfloat, MR * MT> sums = aie::zeros<accfloat, MR * MT>();
  for (int g = 0; g < groups; ++g) {
    weights[g] = exp_to_bf16(aie::sub(scores[g], row_max));
    if (diagonal) weights[g] = aie::select(bfloat16(0.0f), weights[g], causal_mask(row, g * MT));
    sums = aie::add(sums, weights[g]);
  }
  const Block row_sums = sums.to_vector<float>();
  for (int r = 0; r < MR; ++r) {
    s->sum[row + r] = s->sum[row + r] * rescale[r * MT] +
                      aie::reduce_add(row_sums.extract<MT>(r));
    s->max[row + r] = new_max[r];
  }

  // O = O * rescale + P V, per MT head dims: V's rows are the B operand as they are.
  for (int d = 0; d < AIEK_DH; d += MT) {
    float *out = s->acc + row * AIEK_DH + d;
    MMUL acc(aie::mul(load_block<MR, MT>(out, AIEK_DH), rescale));
    for (int g = 0; g < groups; ++g)
      acc.mac(weights[g], load_block<MS, MT>(v + g * MT * AIEK_DH + d, AIEK_DH));
    store_block<MR, MT>(out, AIEK_DH, acc.to_vector<float>());
  }
}

extern "C" void AIEK_CAT(flash_attn_step_, AIEK_SUFFIX)(const bfloat16 *q, const bfloat16 *kv,
                                                        State *s) {
  const bfloat16 *k = kv, *v = kv + AIEK_BK * AIEK_DH;
  q += s->query_head * AIEK_BQ * AIEK_DH;
  const int key_block = s->key_block++;
  if (key_block > s->query_block) return;  // entirely above the causal diagonal
  set_round_to_nearest_even();              // the exps round to bf16, fact (R)
  transpose_keys(k, s->keys_t);
  const bool diagonal = key_block == s->query_block;
  // Queries and keys start together (prefill): every row sees key 0 first, so key
  // block 0 is where every row's history starts, and the only such block.
  const bool first = key_block == 0;
  for (int row = 0; row < AIEK_BQ; row += MR) {
    // On the diagonal a strip sees keys up to its last row: later key groups are
    // wholly masked and skipped.
    const int groups = diagonal ? (row + MR - 1) / MT + 1 : KEY_GROUPS;
    fold_strip(q + row * AIEK_DH, v, s, row, groups, diagonal, first);
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
