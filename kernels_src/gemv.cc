// GEMV tiles for y[N] = w[N,K] @ x[K] (aierun/ops/matmul.py with M = 1, aiebuild/ops/gemv.py).
// -D AIEK_K=<length of x>  -D AIEK_TN=<rows of w per tile>  -D AIEK_TK=<columns per tile>
// Entry points gemv_bf16_<K>x<TN>x<TK>_<bf16|f32>(x[K], w[TN][TK], y[TN], state): the
// design calls one K / TK times per TN-row block; the state (zero-initialized by the
// design) holds the fp32 partial dot products and the k-tile counter, so the core's
// k loop is a loop, not K / TK unrolled calls. The last call of a block writes y
// (bf16, or the fp32 accumulators themselves for the LM head logits).
// Relies on (S) for the per-row reduction order, (R) for the bf16 variant's rounding.
#include "aie_kernel_common.h"

#define AIEK_SUFFIX AIEK_CAT5(AIEK_K, x, AIEK_TN, x, AIEK_TK)
static constexpr int LANES = 16;
static constexpr int K_TILES = AIEK_K / AIEK_TK;
static_assert(AIEK_K % AIEK_TK == 0 && AIEK_TK % LANES == 0 && AIEK_TN % LANES == 0,
              "tiles must be whole vectors");

struct State {
  float partial[AIEK_TN];  // fp32 accumulators of the current row block
  int k_tile;              // the next k tile of this row block
};
static_assert(sizeof(State) == (AIEK_TN + 1) * sizeof(float), "State must match the design");

static inline void accumulate(const bfloat16 *x, const bfloat16 *w, State *s) {
  const int k_tile = s->k_tile;
  if (k_tile == 0)
    for (int n = 0; n < AIEK_TN; n += LANES)
      aie::store_v(s->partial + n, aie::zeros<float, LANES>());
  for (int n = 0; n < AIEK_TN; ++n) {
    aie::accum<accfloat, LANES> dot = aie::zeros<accfloat, LANES>();
    for (int k = 0; k < AIEK_TK; k += LANES)
      dot = aie::mac(dot, aie::load_v<LANES>(w + n * AIEK_TK + k),
                     aie::load_v<LANES>(x + k_tile * AIEK_TK + k));
    s->partial[n] += aie::reduce_add(dot.to_vector<float>());  // lanes, then halves: (S)
  }
}

template <typename out_t>
static inline void finish(out_t *y, State *s) {
  if (++s->k_tile < K_TILES) return;
  s->k_tile = 0;  // the next row block starts over
  set_round_to_nearest_even();
  for (int n = 0; n < AIEK_TN; n += LANES)
    store_as<LANES>(y + n, aie::load_v<LANES>(s->partial + n));
}

extern "C" void AIEK_CAT(AIEK_CAT(gemv_bf16_, AIEK_SUFFIX), _bf16)(const bfloat16 *x,
                                                                   const bfloat16 *w,
                                                                   bfloat16 *y, State *s) {
  accumulate(x, w, s);
  finish(y, s);
}

extern "C" void AIEK_CAT(AIEK_CAT(gemv_bf16_, AIEK_SUFFIX), _f32)(const bfloat16 *x,
                                                                  const bfloat16 *w, float *y,
                                                                  State *s) {
  accumulate(x, w, s);
  finish(y, s);
}
