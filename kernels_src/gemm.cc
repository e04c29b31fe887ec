// GEMM tiles for y[M,N] = x[M,K] @ w[N,K]^T (aierun/ops/matmul.py, aiebuild/designs/gemm.py).
// -D TM=<rows of x per tile>  -D TK=<k per tile>  -D TN=<rows of w per tile>
// Entry points (suffix <TM>x<TK>x<TN>):
//   gemm_zero_f32_*(acc[TM*TN])                     acc = 0
//   gemm_mac_bf16_*(x[TM][TK], w[TN][TK], acc)      acc += x @ w^T   (bf16 x bf16 -> fp32)
//   gemm_store_bf16_*(acc, y[TM][TN])                y = bf16(acc)
// Relies on (B) (true bf16 mmul, fp32 accumulation), (R) for the single rounding in store.
#include "aie_kernel_common.h"

#define SUFFIX AIE_CAT5(TM, x, TK, x, TN)
static constexpr int R = 4, S = 8, T = 8;  // the AIE2P bf16 mmul shape
using MMUL = aie::mmul<R, S, T, bfloat16, bfloat16, accauto>;
static_assert(TM % R == 0 && TK % S == 0 && TN % T == 0, "tiles must hold whole mmul blocks");

// An R x S block of a row-major tile with `ld` columns.
static inline aie::vector<bfloat16, R * S> block_rows(const bfloat16 *p, int ld) {
  return aie::concat(aie::load_v<S>(p), aie::load_v<S>(p + ld), aie::load_v<S>(p + 2 * ld),
                     aie::load_v<S>(p + 3 * ld));
}

// The S x T block of w^T at (k, n): rows n..n+T of w, columns k..k+S, transposed.
static inline aie::vector<bfloat16, S * T> block_wt(const bfloat16 *w, int k, int n) {
  aie::vector<bfloat16, S * T> rows;
  for (int r = 0; r < T; ++r) rows.insert(r, aie::load_v<S>(w + (n + r) * TK + k));
  return aie::transpose(rows, T, S);
}

extern "C" void AIE_CAT(gemm_zero_f32_, SUFFIX)(float *acc) {
  for (int i = 0; i < TM * TN; i += 16) aie::store_v(acc + i, aie::zeros<float, 16>());
}

extern "C" void AIE_CAT(gemm_mac_bf16_, SUFFIX)(const bfloat16 *x, const bfloat16 *w, float *acc) {
  for (int i = 0; i < TM; i += R) {
    for (int n = 0; n < TN; n += T) {
      MMUL block;
      block.mul(block_rows(x + i * TK, TK), block_wt(w, 0, n));
      for (int k = S; k < TK; k += S) block.mac(block_rows(x + i * TK + k, TK), block_wt(w, k, n));
      aie::vector<float, R * T> sum = block.to_vector<float>();
      for (int r = 0; r < R; ++r) {
        float *row = acc + (i + r) * TN + n;
        aie::store_v(row, aie::add(aie::load_v<T>(row), sum.extract<T>(r)));
      }
    }
  }
}

extern "C" void AIE_CAT(gemm_store_bf16_, SUFFIX)(const float *acc, bfloat16 *y) {
  set_round_to_nearest_even();
  for (int i = 0; i < TM * TN; i += 16) store_as<16>(y + i, aie::load_v<16>(acc + i));
}
