// GEMM tiles for y[M,N] = x[M,K] @ w[N,K]^T (aierun/ops/matmul.py, aiebuild/ops/gemm.py).
// -D AIEK_TM=<rows of x per tile>  -D AIEK_TK=<k per tile>  -D AIEK_TN=<rows of w per tile>
// -D AIEK_MMA=bf16|bfp16: the matmul mode (aiebuild/specs.py GEMM_MMA)
//   bf16:  true bf16 x bf16 -> fp32 mmul, 4x8x8 blocks (fact B).
//   bfp16: AIE_API_EMULATE_BFLOAT16_MMUL_WITH_BFP16: aie_api converts each operand block
//          to bfp16 (8 values sharing an exponent, 8-bit mantissas, rounded by the
//          rounding mode register) and issues one 8x8x8 bfp16 mac (512 MACs). Emulated:
//          aierun.ops.numerics.to_bfp16, for round-to-nearest-even, set below.
// Entry points (suffix <TM>x<TK>x<TN>_<MMA>: both modes link side by side in one ELF):
//   gemm_zero_f32_*(acc[TM*TN])                     acc = 0
//   gemm_mac_bf16_*(x[TM][TK], w[TN][TK], acc)      acc += x @ w^T   (bf16 operands -> fp32)
//   gemm_store_bf16_*(acc, y[TM][TN])                y = bf16(acc)
// Relies on (R) for the single rounding in store and the bfp16 conversion's rounding.
#define AIEK_MMA_IS_bf16 1
#define AIEK_MMA_IS_bfp16 2
#define AIEK_MMA_CODE_(mode) AIEK_MMA_IS_##mode
#define AIEK_MMA_CODE(mode) AIEK_MMA_CODE_(mode)
#if AIEK_MMA_CODE(AIEK_MMA) == AIEK_MMA_IS_bfp16
// Read by aie_api, so defined before it is included (upstream passes it as -D).
#define AIE_API_EMULATE_BFLOAT16_MMUL_WITH_BFP16 1
static constexpr int MR = 8;  // one mac_8x8_8x8T: a 4-row block would waste half of it
#elif AIEK_MMA_CODE(AIEK_MMA) == AIEK_MMA_IS_bf16
static constexpr int MR = 4;  // the AIE2P bf16 mmul shape 4x8x8
#else
#error "-D AIEK_MMA must be bf16 or bfp16 (aiebuild/ops/gemm.py passes the launch's mma)"
#endif

#include "aie_kernel_common.h"

#define AIEK_SUFFIX AIEK_CAT5(AIEK_TM, x, AIEK_TK, x, AIEK_CAT3(AIEK_TN, _, AIEK_MMA))
static constexpr int MS = 8, MT = 8;
using MMUL = aie::mmul<MR, MS, MT, bfloat16, bfloat16, accauto>;
static_assert(AIEK_TM % MR == 0 && AIEK_TK % MS == 0 && AIEK_TN % MT == 0,
              "tiles must hold whole mmul blocks");

// An MR x MS block of a row-major tile with `ld` columns.
static inline aie::vector<bfloat16, MR * MS> block_rows(const bfloat16 *p, int ld) {
  aie::vector<bfloat16, MR * MS> rows;
  for (int r = 0; r < MR; ++r) rows.insert(r, aie::load_v<MS>(p + r * ld));
  return rows;
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
  // Only the bfp16 conversion rounds here (the default, floor, would bias every
  // mantissa low); the true bf16 mmul is exact.
  set_round_to_nearest_even();
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
