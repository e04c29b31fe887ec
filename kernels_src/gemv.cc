// GEMV tiles for y[N] = w[N,K] @ x[K] (aierun/ops/matmul.py with M = 1, designs/gemv.py).
// -D K=<length of x>  -D TN=<rows of w per tile>  -D TK=<columns of w per tile>
// Entry points gemv_bf16_<K>x<TN>x<TK>_<bf16|f32>(x[K], w[TN][TK], y[TN], int k_tile):
// the design calls them for k_tile = 0 .. K/TK-1 on one TN-row block; the partial dot
// products accumulate in an fp32 buffer and the last call writes y (bf16, or the fp32
// accumulators themselves for the LM head logits).
// Relies on (S) for the per-row reduction order, (R) for the bf16 variant's rounding.
#include "aie_kernel_common.h"

#define SUFFIX AIE_CAT5(K, x, TN, x, TK)
static constexpr int LANES = 16;
static constexpr int K_TILES = K / TK;
static_assert(K % TK == 0 && TK % LANES == 0 && TN % LANES == 0, "tiles must be whole vectors");

alignas(32) static float partial[TN];  // fp32 accumulators of the current row block

static inline void accumulate(const bfloat16 *x, const bfloat16 *w, int k_tile) {
  if (k_tile == 0)
    for (int n = 0; n < TN; n += LANES) aie::store_v(partial + n, aie::zeros<float, LANES>());
  for (int n = 0; n < TN; ++n) {
    aie::accum<accfloat, LANES> dot = aie::zeros<accfloat, LANES>();
    for (int k = 0; k < TK; k += LANES)
      dot = aie::mac(dot, aie::load_v<LANES>(w + n * TK + k), aie::load_v<LANES>(x + k_tile * TK + k));
    partial[n] += aie::reduce_add(dot.to_vector<float>());  // lanes, then halves: fact (S)
  }
}

template <typename out_t>
static inline void finish(out_t *y, int k_tile) {
  if (k_tile != K_TILES - 1) return;
  set_round_to_nearest_even();
  for (int n = 0; n < TN; n += LANES) store_as<LANES>(y + n, aie::load_v<LANES>(partial + n));
}

extern "C" void AIE_CAT(AIE_CAT(gemv_bf16_, SUFFIX), _bf16)(const bfloat16 *x, const bfloat16 *w,
                                                          bfloat16 *y, int k_tile) {
  accumulate(x, w, k_tile);
  finish(y, k_tile);
}

extern "C" void AIE_CAT(AIE_CAT(gemv_bf16_, SUFFIX), _f32)(const bfloat16 *x, const bfloat16 *w,
                                                         float *y, int k_tile) {
  accumulate(x, w, k_tile);
  finish(y, k_tile);
}
