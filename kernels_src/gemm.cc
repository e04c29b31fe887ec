// GEMM tiles for y[M,N] = x[M,K] @ w[N,K]^T (aierun/ops/matmul.py, aiebuild/ops/gemm.py).
// -D AIEK_TM=<rows of x per tile>  -D AIEK_TK=<k per tile>  -D AIEK_TN=<rows of w per tile>
// -D AIEK_MMA=bf16|bfp16: the matmul mode (aiebuild/specs.py GEMM_MMA)
//   bf16:  true bf16 x bf16 -> fp32 mmul, 4x8x8 blocks (fact B).
//   bfp16: the native 8x8x8 bfp16 mmul. Each call converts its x and w tiles to bfp16
//          once (blocks of 8 along k sharing an exponent, 8-bit mantissas, rounded by
//          the rounding mode register, round-to-nearest-even set below) into the core
//          scratch `q`; every block is then reused by all the products that need it.
//          Emulated: aierun.ops.numerics.to_bfp16.
// Layouts (aiebuild/ops/gemm.py lays the tiles out with the memory tiles' DMA):
//   x: MR x 8 blocks, k block major: block (i, k) at (k * TM / MR + i) * MR * 8, each
//      row-major (so a memory tile streams a wider chunk of k as consecutive tiles);
//   w: 8 x 8 blocks in the same order, block (n, k) at (k * TN / 8 + n) * 64, each
//      row-major (rows are n, columns k);
//   acc: MR x 8 blocks of fp32, block (i, n) at (i * TN / 8 + n) * MR * 8, row-major.
// Entry points (suffix <TM>x<TK>x<TN>_<MMA>: both modes link side by side in one ELF):
//   gemm_zero_f32_*(acc[TM*TN])                     acc = 0
//   gemm_mac_bf16_*(x, w, acc[, q])                 acc += x @ w^T  (bf16 operands -> fp32;
//                                                   q: bfp16 only, (TM + TN) * TK / 8 blocks)
//   gemm_store_bf16_*(acc, y[TM][TN])                y = bf16(acc), row-major
// Relies on (R) for the single rounding in store and the bfp16 conversion's rounding.
#define AIEK_MMA_IS_bf16 1
#define AIEK_MMA_IS_bfp16 2
#define AIEK_MMA_CODE_(mode) AIEK_MMA_IS_##mode
#define AIEK_MMA_CODE(mode) AIEK_MMA_CODE_(mode)
#if AIEK_MMA_CODE(AIEK_MMA) == AIEK_MMA_IS_bfp16
#define AIEK_BFP16 1
#elif AIEK_MMA_CODE(AIEK_MMA) == AIEK_MMA_IS_bf16
#define AIEK_BFP16 0
#else
#error "-D AIEK_MMA must be bf16 or bfp16 (aiebuild/ops/gemm.py passes the launch's mma)"
#endif

#include "aie_kernel_common.h"

#define AIEK_SUFFIX AIEK_CAT5(AIEK_TM, x, AIEK_TK, x, AIEK_CAT3(AIEK_TN, _, AIEK_MMA))
#if AIEK_BFP16
static constexpr int MR = 8;  // aie::mmul<8, 8, 8, bfp16ebs8, bfp16ebs8>
using MMUL = aie::mmul<8, 8, 8, bfp16ebs8, bfp16ebs8, accauto>;
#else
static constexpr int MR = 4;  // the AIE2P bf16 mmul shape 4x8x8
using MMUL = aie::mmul<MR, 8, 8, bfloat16, bfloat16, accauto>;
#endif
static constexpr int MS = 8, MT = 8;
static constexpr int KB = AIEK_TK / MS, IB = AIEK_TM / MR, NB = AIEK_TN / MT;
static constexpr int A_SIZE = MR * MS, B_SIZE = MT * MS, C_SIZE = MR * MT;
// 2 x 2 output blocks per pass over k: each A and B operand serves two mmuls, and no
// mmul's accumulator is the previous MAC's result.
static_assert(AIEK_TM % (2 * MR) == 0 && AIEK_TK % MS == 0 && AIEK_TN % (2 * MT) == 0,
              "tiles must hold whole 2 x 2 groups of mmul blocks");

extern "C" void AIEK_CAT(gemm_zero_f32_, AIEK_SUFFIX)(float *acc) {
  for (int i = 0; i < AIEK_TM * AIEK_TN; i += 16) aie::store_v(acc + i, aie::zeros<float, 16>());
}

// acc += A @ B over the tile; a(i, k) and b(n, k) give the operands of block (i, n) at
// k block k.
template <typename A, typename B>
static inline void mac_blocks(float *acc, A a, B b) {
  for (int i = 0; i < IB; i += 2)
    for (int n = 0; n < NB; n += 2) {
      float *c[2][2];
      MMUL block[2][2];
      for (int r = 0; r < 2; ++r)
        for (int s = 0; s < 2; ++s) {
          c[r][s] = acc + ((i + r) * NB + n + s) * C_SIZE;
          block[r][s] = MMUL(aie::accum<accfloat, C_SIZE>(aie::load_v<C_SIZE>(c[r][s])));
        }
      for (int k = 0; k < KB; ++k) {
        const auto a0 = a(i, k), a1 = a(i + 1, k);
        const auto b0 = b(n, k), b1 = b(n + 1, k);
        block[0][0].mac(a0, b0);
        block[0][1].mac(a0, b1);
        block[1][0].mac(a1, b0);
        block[1][1].mac(a1, b1);
      }
      for (int r = 0; r < 2; ++r)
        for (int s = 0; s < 2; ++s)
          aie::store_v(c[r][s], block[r][s].template to_vector<float>());
    }
}

#if AIEK_BFP16
using Operand = aie::block_vector<bfp16ebs8, 64>;
static constexpr int X_BLOCKS = IB * KB, W_BLOCKS = NB * KB;

// 64-value blocks of bf16 to bfp16ebs8, each widened to fp32 by a product with ones
// (exact; upstream's bfp_conversion example converts its B operand this way, keeping the
// move slot for the other conversions) and converted by the current rounding mode.
static inline void to_bfp16(const bfloat16 *in, int blocks, bfp16ebs8 *out) {
  const aie::vector<bfloat16, 64> ones = aie::broadcast<bfloat16, 64>(bfloat16(1.0f));
  aie::block_vector_output_buffer_stream<bfp16ebs8, 64> stream(out);
  for (int j = 0; j < blocks; ++j)
    stream << aie::mul(aie::load_v<64>(in + j * 64), ones).template to_vector<bfp16ebs8>();
}

static inline Operand load_block(const bfp16ebs8 *q, int index) {
  Operand v;
  aie::block_vector_input_buffer_stream<bfp16ebs8, 64>(q + index * Operand::blocks) >> v;
  return v;
}

extern "C" void AIEK_CAT(gemm_mac_bf16_, AIEK_SUFFIX)(const bfloat16 *x, const bfloat16 *w,
                                                      float *acc, bfp16ebs8 *q) {
  set_round_to_nearest_even();  // the bfp16 conversion rounds (the default, floor, biases)
  bfp16ebs8 *xq = q, *wq = q + X_BLOCKS * Operand::blocks;
  to_bfp16(x, X_BLOCKS, xq);
  to_bfp16(w, W_BLOCKS, wq);
  mac_blocks(acc, [xq](int i, int k) { return load_block(xq, k * IB + i); },
             [wq](int n, int k) { return load_block(wq, k * NB + n); });
}
#else
extern "C" void AIEK_CAT(gemm_mac_bf16_, AIEK_SUFFIX)(const bfloat16 *x, const bfloat16 *w,
                                                      float *acc) {
  // The 4x8x8 bf16 mmul takes B as k rows by n columns: each w block is transposed once
  // per pass and serves two row blocks.
  mac_blocks(acc, [x](int i, int k) { return aie::load_v<A_SIZE>(x + (k * IB + i) * A_SIZE); },
             [w](int n, int k) {
               return aie::transpose(aie::load_v<B_SIZE>(w + (k * NB + n) * B_SIZE), MT, MS);
             });
}
#endif

// acc's blocks to row-major bf16 rows of y, rounded once.
extern "C" void AIEK_CAT(gemm_store_bf16_, AIEK_SUFFIX)(const float *acc, bfloat16 *y) {
  set_round_to_nearest_even();
  for (int i = 0; i < IB; ++i)
    for (int n = 0; n < NB; ++n) {
      const aie::accum<accfloat, C_SIZE> block(aie::load_v<C_SIZE>(acc + (i * NB + n) * C_SIZE));
      const aie::vector<bfloat16, C_SIZE> rows = block.template to_vector<bfloat16>();
      for (int r = 0; r < MR; ++r)
        aie::store_v(y + (i * MR + r) * AIEK_TN + n * MT, rows.template extract<MT>(r));
    }
}
