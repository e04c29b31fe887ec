// GEMM tiles for y[M,N] = x[M,K] @ w[N,K]^T (aierun/ops/matmul.py, aiebuild/designs/gemm.py).
// -D AIEK_TM=<rows of x per tile>  -D AIEK_TK=<k per tile>  -D AIEK_TN=<rows of w per tile>
// Entry points (suffix <TM>x<TK>x<TN>):
//   gemm_zero_f32_*(acc[TM*TN])                     acc = 0
//   gemm_mac_bf16_*(x[TM][TK], w[TN][TK], acc)      acc += x @ w^T   (bf16 x bf16 -> fp32)
//   gemm_store_bf16_*(acc, y[TM][TN])                y = bf16(acc)
// Relies on (B) (true bf16 mmul, fp32 accumulation), (R) for the single rounding in store.
#include "aie_kernel_common.h"

#define AIEK_SUFFIX AIEK_CAT5(AIEK_TM, x, AIEK_TK, x, AIEK_TN)
static constexpr int MR = 4, MS = 8, MT = 8;  // the AIE2P bf16 mmul shape
using MMUL = aie::mmul<MR, MS, MT, bfloat16, bfloat16, accauto>;
static_assert(AIEK_TM % MR == 0 && AIEK_TK % MS == 0 && AIEK_TN % MT == 0,
              "tiles must hold whole mmul blocks");

// An MR x MS block of a row-major tile with `ld` columns.
static inline aie::vector<bfloat16, MR * MS> block_rows(const bfloat16 *p, int ld) {
  return aie::concat(aie::load_v<MS>(p), aie::load_v<MS>(p + ld), aie::load_v<MS>(p + 2 * ld),
                     aie::load_v<MS>(p + 3 * ld));
}

// The MS x MT block of w^T at (k, n): rows n..n+MT of w, columns k..k+MS, transposed.
static inline aie::vector<bfloat16, MS * MT> block_wt(const bfloat16 *w, int k, int n) {
  aie::vector<bfloat16, MS * MT> rows;
  for (int r = 0; r < MT; ++r) rows.insert(r, aie::load_v<MS>(w + (n + r) * AIEK_TK + k));
  return aie::transpose(rows, MT, MS);
}

extern "C" void AIEK_CAT(gemm_zero_f32_, AIEK_SUFFIX)(float *acc) {
  for (int i = 0; i < AIEK_TM * AIEK_TN; i += 16) aie::store_v(acc + i, aie::zeros<float, 16>());
}

extern "C" void AIEK_CAT(gemm_mac_bf16_, AIEK_SUFFIX)(const bfloat16 *x, const bfloat16 *w,
                                                      float *acc) {
  for (int i = 0; i < AIEK_TM; i += MR) {
    for (int n = 0; n < AIEK_TN; n += MT) {
      MMUL block;
      block.mul(block_rows(x + i * AIEK_TK, AIEK_TK), block_wt(w, 0, n));
      for (int k = MS; k < AIEK_TK; k += MS)
        block.mac(block_rows(x + i * AIEK_TK + k, AIEK_TK), block_wt(w, k, n));
      aie::vector<float, MR * MT> sum = block.to_vector<float>();
      for (int r = 0; r < MR; ++r) {
        float *row = acc + (i + r) * AIEK_TN + n;
        aie::store_v(row, aie::add(aie::load_v<MT>(row), sum.extract<MT>(r)));
      }
    }
  }
}

extern "C" void AIEK_CAT(gemm_store_bf16_, AIEK_SUFFIX)(const float *acc, bfloat16 *y) {
  set_round_to_nearest_even();
  for (int i = 0; i < AIEK_TM * AIEK_TN; i += 16) store_as<16>(y + i, aie::load_v<16>(acc + i));
}
