// GEMV tiles for y[N] = w[N,K] @ x[K] (aierun/ops/matmul.py with M = 1, aiebuild/ops/gemv.py).
// -D AIEK_K=<length of x>  -D AIEK_TN=<rows of w per tile>  -D AIEK_TK=<columns per tile>
// Entry points gemv_bf16_<K>x<TN>x<TK>_<bf16|f32>(x[K], w[TN][TK], y[TN], state): the
// design calls one K / TK times per TN-row block; the state (zero-initialized by the
// design) holds one fp32 vector of partial sums per row and the k-tile counter, so the
// core's k loop is a loop, not K / TK unrolled calls. Every load is a 512-bit vector
// (32 bf16 of w or x, 16 fp32 of the state); a row's lanes are reduced once, on the
// block's last call, which writes y (bf16, or fp32 for the LM head logits).
// Relies on (S) for the per-row reduction order, (R) for the bf16 variant's rounding.
#include "aie_kernel_common.h"

#define AIEK_SUFFIX AIEK_CAT5(AIEK_K, x, AIEK_TN, x, AIEK_TK)
static constexpr int LANES = 32;   // bf16 per 512-bit load
static constexpr int HALF = 16;    // fp32 per 512-bit load
static constexpr int K_TILES = AIEK_K / AIEK_TK;
static_assert(AIEK_K % AIEK_TK == 0 && AIEK_TK % LANES == 0 && AIEK_TN % HALF == 0,
              "tiles must be whole vectors");

struct State {
  float partial[AIEK_TN][LANES];  // per row, fp32 lane sums of the current row block
  float sums[AIEK_TN];            // the rows' dot products, staged for vector stores to y
  int k_tile;                     // the next k tile of this row block
};
static_assert(sizeof(State) == (AIEK_TN * (LANES + 1) + 1) * sizeof(float),
              "State must match the design");

static inline void accumulate(const bfloat16 *x, const bfloat16 *w, State *s) {
  const bfloat16 *xt = x + s->k_tile * AIEK_TK;
  const bool first = s->k_tile == 0;
  for (int n = 0; n < AIEK_TN; ++n) {
    aie::accum<accfloat, LANES> acc = aie::zeros<accfloat, LANES>();
    if (!first) acc.from_vector(aie::load_v<LANES>(s->partial[n]));
    for (int k = 0; k < AIEK_TK; k += LANES)
      acc = aie::mac(acc, aie::load_v<LANES>(w + n * AIEK_TK + k), aie::load_v<LANES>(xt + k));
    aie::store_v(s->partial[n], acc.to_vector<float>());
  }
}

template <typename out_t>
static inline void finish(out_t *y, State *s) {
  if (++s->k_tile < K_TILES) return;
  s->k_tile = 0;  // the next row block starts over
  set_round_to_nearest_even();
  for (int n = 0; n < AIEK_TN; ++n)  // one reduction per row and block: lanes, then halves (S)
    s->sums[n] = aie::reduce_add(aie::load_v<LANES>(s->partial[n]));
  for (int n = 0; n < AIEK_TN; n += HALF) store_as<HALF>(y + n, aie::load_v<HALF>(s->sums + n));
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
