// Causal attention of one (head, query block) with an online softmax
// (aierun/ops/attention.py, aiebuild/ops/flash_attn.py).
// -D AIEK_DH=<head dim>  -D AIEK_BQ=<query rows per block>  -D AIEK_BK=<key rows per block>
// Entry points (suffix <DH>_<BQ>x<BK>), state = State below (the design's fp32 state
// buffer of the same size; its initial value sets the core's first query block, its
// step and its head in the queries object, see aiebuild/ops/flash_attn.py
// initial_state), ops = Operands below (the design's uint8 operand buffer):
//   flash_attn_init_*(q, state, ops)         start a query block: its queries to bfp16
//                                            once (q = the query blocks of the column's
//                                            heads, BQ rows each; this core's is
//                                            q[state.query_head])
//   flash_attn_step_*(kv, state, ops)        fold in the next key block, kv = [K; V]
//                                            (BK rows each); blocks above the causal
//                                            diagonal are skipped
//   flash_attn_finish_*(state, out, blocks)  out = bf16(acc / sum); the core's next
//                                            query block (back to its first after
//                                            `blocks`: the next KV head)
// The key and query block indices live in the state, so the design's core loops
// stay loops rather than unrolled calls with constant indices.
//
// Every product is the native bfp16 8x8x8 mmul (fact B; as gemm.cc -D AIEK_MMA=bfp16),
// computed transposed so that each query is a lane: S^T = K Q^T (A: 8 keys by 8 head
// dims, B: 8 queries by 8 head dims) and O^T = V^T P^T (A: 8 head dims by 8 keys, B: 8
// queries by 8 keys). A query's max, sum and rescale are then lane-wise over the rows
// of a block, with no per-row reductions. Q is converted once per query block, K and
// V^T once per key block (for all the block's strips of 8 queries; K as its bfp16 value
// and the bfp16 value of its rest, store_split); P once per 8 x 8 block, as its value
// and rest too (store_weights). The sum of a query's weights is one more O^T row block: ones x P^T, the same
// bfp16 weights the outputs take. The softmax: the scaled, max-subtracted scores in one
// fp32 multiply-accumulate, the bf16 exp2 (L), the rescale of the fp32 accumulators
// once per key block. Relies on (B), (L), (M) for the fp32 products, (R) for the
// bf16 exps, the bfp16 conversions and the output.
#include "aie_kernel_common.h"

#include <cmath>

#define AIEK_SUFFIX AIEK_CAT5(AIEK_DH, _, AIEK_BQ, x, AIEK_BK)
static constexpr int N8 = 8;        // rows, depth and columns of the bfp16 mmul
static constexpr int OP = N8 * N8;  // values of one operand or result block
using MMUL = aie::mmul<N8, N8, N8, bfp16ebs8, bfp16ebs8, accauto>;
using Operand = aie::block_vector<bfp16ebs8, OP>;
using Block = aie::vector<float, OP>;  // an 8 x 8 fp32 block, row-major
using Lanes = aie::vector<float, N8>;  // one value per query of a strip
static constexpr int DG = AIEK_DH / N8, KG = AIEK_BK / N8, QS = AIEK_BQ / N8;
static_assert(AIEK_BQ % N8 == 0 && AIEK_BK % N8 == 0 && AIEK_DH % N8 == 0,
              "blocks must hold whole 8 x 8 mmul blocks");
// The diagonal block test compares a key row with a query row of the same block
// index: it needs square blocks.
static_assert(AIEK_BQ == AIEK_BK, "the causal mask assumes square blocks");

// The bfp16 operands, OP / 8 blocks of 9 bytes each, in operand order.
struct Operands {
  bfp16ebs8 queries[QS * DG * OP / N8];  // (strip, head dims): 8 queries x 8 dims
  // (key group, head dims): 8 keys x 8 dims, as its bfp16 value, then the rest K -
  // that value (store_split).
  bfp16ebs8 keys[2 * KG * DG * OP / N8];
  bfp16ebs8 values[DG * KG * OP / N8];   // (head dims, key group): 8 dims x 8 keys
  // The current strip's weights P, per key group 8 queries x 8 keys: their bfp16
  // value, then the rest P - that value as another bfp16 operand.
  bfp16ebs8 weights[2 * KG * OP / N8];
  bfp16ebs8 identity[OP / N8];  // the 8 x 8 identity, to read a bfp16 operand back
  bfp16ebs8 ones[OP / N8];      // all ones: A of the sums row block
};
struct State {
  // Per strip of 8 queries: DG O^T blocks (8 head dims x 8 queries), then the sums
  // block (every row the queries' sums).
  float acc[QS * (DG + 1) * OP];
  float scores[KG * OP];  // the current strip's S^T blocks (8 keys x 8 queries)
  float max[AIEK_BQ];
  int key_block;    // index of the next key block of this query block
  int query_block;  // index of the current query block within its head
  int query_first;  // this core's first query block of a head
  int query_step;   // query blocks between this core's successive ones
  int query_head;   // this core's block in the queries object it shares
};
static_assert(sizeof(State) ==
                  (QS * (DG + 1) * OP + KG * OP + AIEK_BQ + 5) * sizeof(float),
              "State must match the design's state buffer");

static inline Operand load_operand(const bfp16ebs8 *p) {
  Operand v;
  aie::block_vector_input_buffer_stream<bfp16ebs8, OP>(p) >> v;
  return v;
}

// A row-major 8 x 8 bf16 block times `sign` (+1 or -1) to a bfp16 operand at p
// (blocks of 8 along its rows), widened by the product (exact, as gemm.cc) and
// rounded by the current mode.
static inline void store_operand(bfp16ebs8 *p, aie::vector<bfloat16, OP> block,
                                 float sign = 1.0f) {
  const auto signs = aie::broadcast<bfloat16, OP>(bfloat16(sign));
  aie::block_vector_output_buffer_stream<bfp16ebs8, OP>(p)
      << aie::mul(block, signs).template to_vector<bfp16ebs8>();
}

// An 8 x 8 block of a row-major bf16 matrix of AIEK_DH columns.
static inline aie::vector<bfloat16, OP> rows_block(const bfloat16 *p) {
  return load_block<N8, N8>(p, AIEK_DH);
}

// The block whose every row is `lanes`: a query's value in its column.
static inline Block per_column(Lanes lanes) {
  Block block;
  for (int r = 0; r < N8; ++r) block.insert(r, lanes);
  return block;
}

// The lane-wise max over a block's 8 rows.
static inline Lanes column_max(Block b) {
  const auto half = aie::max(b.extract<OP / 2>(0), b.extract<OP / 2>(1));
  const auto quarter = aie::max(half.extract<OP / 4>(0), half.extract<OP / 4>(1));
  return aie::max(quarter.extract<N8>(0), quarter.extract<N8>(1));
}

// Lanes (key r, query c) of a diagonal S^T block whose key is visible to its query
// (r <= c), for the rows 4h .. 4h + 3 of half h.
static constexpr unsigned visible_half(int h) {
  unsigned bits = 0;
  for (int r = 0; r < N8 / 2; ++r) bits |= ((0xFFu << (4 * h + r)) & 0xFFu) << (r * N8);
  return bits;
}
// The diagonal block with its hidden lanes set to `hidden` (masks are 32 lanes wide).
template <typename T>
static inline aie::vector<T, OP> causal(aie::vector<T, OP> v, T hidden) {
  for (int h = 0; h < 2; ++h)
    v.insert(h, aie::select(hidden, v.template extract<OP / 2>(h),
                            aie::mask<OP / 2>::from_uint32(visible_half(h))));
  return v;
}

extern "C" void AIEK_CAT(flash_attn_init_, AIEK_SUFFIX)(const bfloat16 *q, State *s,
                                                        Operands *ops) {
  set_round_to_nearest_even();  // the bfp16 conversion rounds, fact (R)
  q += s->query_head * AIEK_BQ * AIEK_DH;
  for (int i = 0; i < QS; ++i)
    for (int d = 0; d < DG; ++d)
      store_operand(ops->queries + (i * DG + d) * N8, rows_block(q + i * N8 * AIEK_DH + d * N8));
  const auto ones = aie::broadcast<bfloat16, OP>(bfloat16(1.0f));
  store_operand(ops->ones, ones);
  // The identity: lanes r * 9 (0, 9, 18, 27 of the first 32-lane half, 36 - 32 = 4,
  // 13, 22, 31 of the second: masks are 32 lanes wide).
  aie::vector<bfloat16, OP> identity;
  for (int h = 0; h < 2; ++h)
    identity.insert(h, aie::select(bfloat16(0.0f), ones.extract<OP / 2>(h),
                                   aie::mask<OP / 2>::from_uint32(h ? 0x80402010u : 0x08040201u)));
  store_operand(ops->identity, identity);
  for (int i = 0; i < QS * (DG + 1) * OP; i += OP) aie::store_v(s->acc + i, aie::zeros<float, OP>());
  for (int r = 0; r < AIEK_BQ; r += N8)
    aie::store_v(s->max + r, aie::broadcast<float, N8>(-INFINITY));
  s->key_block = 0;
}

// The strip's S^T blocks of its first `groups` key groups into s->scores, masked on
// the diagonal; their lane-wise max.
static Lanes strip_scores(const Operands *ops, State *s, int strip, int groups, bool diagonal) {
  MMUL dot[KG];
  for (int d = 0; d < DG; ++d) {
    const Operand queries = load_operand(ops->queries + (strip * DG + d) * N8);
    // Key groups inner: no MAC takes the previous MAC's accumulator.
    for (int g = 0; g < groups; ++g) {
      const bfp16ebs8 *keys = ops->keys + 2 * (g * DG + d) * N8;  // value, rest
      if (d == 0)
        dot[g].mul(load_operand(keys), queries);
      else
        dot[g].mac(load_operand(keys), queries);
      dot[g].mac(load_operand(keys + N8), queries);
    }
  }
  Block seen = aie::broadcast<float, OP>(-INFINITY);
  for (int g = 0; g < groups; ++g) {
    Block scores = dot[g].to_vector<float>();
    if (diagonal && g == strip) scores = causal(scores, -INFINITY);
    aie::store_v(s->scores + g * OP, scores);
    seen = aie::max(seen, scores);
  }
  return column_max(seen);
}

// A row-major 8 x 8 bf16 A operand as two bfp16 operands at p: its value, then its
// rest A - value, read back through the identity as store_weights does. One bfp16 K
// alone loses a key's bits below its block's largest dimension, the largest error of
// the attention against transformers (the default model's last layer at cosine 0.989,
// 0.994 with the rest).
static inline void store_split(const Operands *ops, bfp16ebs8 *p, aie::vector<bfloat16, OP> a) {
  store_operand(p, a);
  MMUL back(aie::mul(a, bfloat16(-1.0f)));  // value - A = -rest
  back.mac(load_operand(p), load_operand(ops->identity));
  store_operand(p + N8, back.to_vector<bfloat16>(), -1.0f);
}

// Key group g's weights P^T (8 keys x 8 queries, bf16) as the B operands of P V: P's
// bfp16 value, then the rest P - value, read back through the identity (an exact
// mmul: one product per lane) and exact in bf16 (the bits of P below the block's
// scale). One bfp16 operand would round every weight below 2^-7 of its block's
// largest to zero: at a sharp attention the weights far from the peak, which the
// spine's decode steps showed (cosine 0.979 against transformers).
static inline void store_weights(Operands *ops, int g, aie::vector<bfloat16, OP> weights_t) {
  bfp16ebs8 *value = ops->weights + 2 * g * N8, *rest = value + N8;
  store_operand(value, aie::transpose(weights_t, N8, N8));
  MMUL back(aie::mul(weights_t, bfloat16(-1.0f)));  // value^T - P^T = -rest^T
  back.mac(load_operand(ops->identity), load_operand(value));
  store_operand(rest, aie::transpose(back.to_vector<bfloat16>(), N8, N8), -1.0f);
}

// Fold `groups` key groups of the block into strip `strip` of 8 queries: their running
// max and the strip's O^T and sums blocks. `first`: the strip has seen no keys yet.
static void fold_strip(Operands *ops, State *s, int strip, int groups, bool diagonal,
                       bool first) {
  // The scale and e^x = 2^(x log2 e) in one fp32 factor (M).
  const float scale = aie::invsqrt(float(AIEK_DH)) * 1.4426950408889634f;
  const Lanes old_max = aie::load_v<N8>(s->max + strip * N8);
  const Lanes new_max = aie::max(old_max, strip_scores(ops, s, strip, groups, diagonal));
  aie::store_v(s->max + strip * N8, new_max);
  // 2^(scale (old - new)) per query; 0 when nothing was seen (acc and sums are 0 then).
  const Block rescale =
      first ? aie::zeros<float, OP>()
            : per_column(to_f32(aie::exp2<bfloat16>(
                  aie::mul(aie::sub(old_max, new_max), scale).to_vector<float>())));
  // P^T = 2^(scale s - scale max) as bf16, P as the B operand; masked keys weigh 0
  // (their -inf scores are not left to exp2).
  const auto shift = aie::mul(per_column(new_max), -scale);
  for (int g = 0; g < groups; ++g) {
    auto weights = aie::exp2<bfloat16>(
        aie::mac(shift, aie::load_v<OP>(s->scores + g * OP), scale).to_vector<float>());
    if (diagonal && g == strip) weights = causal(weights, bfloat16(0.0f));
    store_weights(ops, g, weights);
  }
  // O^T = O^T * rescale + V^T P^T per 8 head dims, then the sums as ones x P^T; P as
  // its bfp16 value and its rest.
  const Operand ones = load_operand(ops->ones);
  for (int d = 0; d <= DG; ++d) {
    float *out = s->acc + (strip * (DG + 1) + d) * OP;
    MMUL acc(aie::mul(aie::load_v<OP>(out), rescale));
    for (int g = 0; g < groups; ++g) {
      const Operand a = d < DG ? load_operand(ops->values + (d * KG + g) * N8) : ones;
      acc.mac(a, load_operand(ops->weights + 2 * g * N8));
      acc.mac(a, load_operand(ops->weights + (2 * g + 1) * N8));
    }
    aie::store_v(out, acc.to_vector<float>());
  }
}

extern "C" void AIEK_CAT(flash_attn_step_, AIEK_SUFFIX)(const bfloat16 *kv, State *s,
                                                        Operands *ops) {
  const bfloat16 *k = kv, *v = kv + AIEK_BK * AIEK_DH;
  const int key_block = s->key_block++;
  if (key_block > s->query_block) return;  // entirely above the causal diagonal
  set_round_to_nearest_even();              // the exps and conversions round, fact (R)
  for (int g = 0; g < KG; ++g)
    for (int d = 0; d < DG; ++d) {
      const int at = g * N8 * AIEK_DH + d * N8;
      store_split(ops, ops->keys + 2 * (g * DG + d) * N8, rows_block(k + at));
      store_operand(ops->values + (d * KG + g) * N8, aie::transpose(rows_block(v + at), N8, N8));
    }
  const bool diagonal = key_block == s->query_block;
  // Queries and keys start together (prefill): every row sees key 0 first, so key
  // block 0 is where every row's history starts, and the only such block.
  const bool first = key_block == 0;
  // On the diagonal strip i sees key groups up to its own: later ones are wholly
  // masked and skipped.
  for (int i = 0; i < QS; ++i) fold_strip(ops, s, i, diagonal ? i + 1 : KG, diagonal, first);
}

extern "C" void AIEK_CAT(flash_attn_finish_, AIEK_SUFFIX)(State *s, bfloat16 *out, int blocks) {
  set_round_to_nearest_even();
  for (int i = 0; i < QS; ++i) {
    const float *acc = s->acc + i * (DG + 1) * OP;
    // The sums block's first row, one scalar inv per query (L).
    const Block scale = per_column(aie::inv(aie::load_v<N8>(acc + DG * OP)));
    for (int d = 0; d < DG; ++d) {
      // O^T's block back to 8 queries x 8 head dims, rounded once to bf16.
      const aie::accum<accfloat, OP> o(aie::mul(aie::load_v<OP>(acc + d * OP), scale));
      const auto rows = aie::transpose(o.to_vector<bfloat16>(), N8, N8);
      store_block<N8, N8>(out + i * N8 * AIEK_DH + d * N8, AIEK_DH, rows);
    }
  }
  s->query_block += s->query_step;
  if (s->query_block >= blocks) s->query_block = s->query_first;  // the next KV head
}
