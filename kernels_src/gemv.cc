// GEMV tiles for y[N] = w[N,K] @ x[K] (aierun/ops/matmul.py with M = 1, aiebuild/ops/gemv.py).
// -D AIEK_K=<length of x>  -D AIEK_TN=<rows of w per tile>  -D AIEK_TK=<columns per tile>
// Entry points gemv_bf16_<K>x<TN>x<TK>_<bf16|f32>(x[K], w[TN][TK], y[TN], state): the
// design calls one K / TK times per TN-row block; the state (zero-initialized by the
// design) holds one fp32 vector of partial sums per row and the k-tile counter, so the
// core's k loop is a loop, not K / TK unrolled calls. Every load is a 512-bit vector
// (32 bf16 of w or x, 16 fp32 of the state); a row's lanes are reduced once, on the
// block's last call, which writes y (bf16, or fp32 for the LM head logits).
// -D AIEK_WFMT=<0 bf16 | 1 q4_0 | 2 q4_1 | 3 q8_0> the weights' format (aierun/ops/quant.py
// WFMT): a quantized w tile is one record of the device layout (aierun/ops/quant.py), the
// step's TN rows of quants, then their fp32 block scales (and q4_1's minimums); each
// block of 32 adds d * (x * q) (and m * x) to the row's lane sums, exactly as the
// emulation does. Entry points gemv_<bf16|q4_0|q4_1|q8_0>_<K>x<TN>x<TK>_<bf16|f32>.
// -D AIEK_SWIGLU=1 (TN = 32) adds gemv_<fmt>_<K>x32x<TK>_swiglu(x, w, a[16], state):
// SwiGLU's silu(g) * u as the epilogue of a block of 16 gate rows then the same 16 up
// rows (aierun/abi.py interleave_rows, aierun/ops/matmul.py gemv).
// -D AIEK_RMSNORM=1 -D AIEK_EPS=<eps> adds gemv_<fmt>_<suffix>_rmsnorm(x[K] fp32,
// norm[K] fp32, xn[K]): RMSNorm as the launch's prologue, called once per core before
// its GEMV calls, which then read xn (the residual stream and the norm weight, widened
// exactly to fp32 at preload, arrive as two objects of one fifo; every core normalizes
// its own copy with the arithmetic of rmsnorm.cc, rms_normalize).
// -D AIEK_RMSNORM=2 adds instead gemv_<fmt>_<suffix>_add_rmsnorm(o[K], x[K], norm[K],
// h[K], xn[K]), fp32 but xn: the residual add before the RMSNorm too, h = o + x (the
// add of eltwise.cc: o holds the bf16 values a GEMV before rounded, as fp32), then xn.
// -D AIEK_ROUNDED=1 adds gemv_<fmt>_<suffix>_rounded(x, w, y[TN] fp32, state): each row
// rounded to bf16 as the bf16 entry point writes it, stored as fp32 for a next launch's
// prologue (whose fifo holds fp32 objects).
// Relies on (S) for the per-row reduction order, (R) for the bf16 variant's rounding,
// (L) and (M) for the epilogue's exp, reciprocal and products.
#include "aie_kernel_common.h"

#ifndef AIEK_WFMT
#define AIEK_WFMT 0
#endif
#ifndef AIEK_SWIGLU
#define AIEK_SWIGLU 0
#endif
#ifndef AIEK_RMSNORM
#define AIEK_RMSNORM 0
#endif
#ifndef AIEK_ROUNDED
#define AIEK_ROUNDED 0
#endif
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

#if AIEK_WFMT == 0
#define AIEK_FMT bf16
using w_t = bfloat16;
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
#else
using w_t = std::uint8_t;  // one record of the device layout
static constexpr int BLOCK = 32;  // values per GGUF block: one vector of lanes
static constexpr int BLOCKS = AIEK_TK / BLOCK;
static_assert(LANES == BLOCK, "a block is one vector of lane sums");
#if AIEK_WFMT == 3
#define AIEK_FMT q8_0
static constexpr int BITS = 8;
// q8_0: 32 int8 quants, widened to bf16 exactly.
static inline aie::vector<bfloat16, BLOCK> quants(const std::uint8_t *q) {
  return aie::to_float<bfloat16>(aie::load_v<BLOCK>(reinterpret_cast<const int8 *>(q)), 0);
}
#else
static constexpr int BITS = 4;
// q4_0 keeps q - 8 as int4, q4_1 q as uint4: unpacked to 8 bits, then widened to bf16.
#if AIEK_WFMT == 1
#define AIEK_FMT q4_0
using nibble_t = int4;
#else
#define AIEK_FMT q4_1
using nibble_t = uint4;
#endif
static inline aie::vector<bfloat16, BLOCK> quants(const std::uint8_t *q) {
  return aie::to_float<bfloat16>(
      aie::unpack(aie::load_v<BLOCK>(reinterpret_cast<const nibble_t *>(q))), 0);
}
#endif
static constexpr int ROW_BYTES = AIEK_TK * BITS / 8;  // one row's quants in the record
static constexpr int QUANT_BYTES = AIEK_TN * ROW_BYTES;

static inline void accumulate(const bfloat16 *x, const std::uint8_t *w, State *s) {
  const bfloat16 *xt = x + s->k_tile * AIEK_TK;
  const float *d = reinterpret_cast<const float *>(w + QUANT_BYTES);  // [TN][BLOCKS]
  const bool first = s->k_tile == 0;
  for (int n = 0; n < AIEK_TN; ++n) {
    aie::accum<accfloat, LANES> acc = aie::zeros<accfloat, LANES>();
    if (!first) acc.from_vector(aie::load_v<LANES>(s->partial[n]));
    for (int b = 0; b < BLOCKS; ++b) {
      const aie::vector<bfloat16, BLOCK> xb = aie::load_v<BLOCK>(xt + b * BLOCK);
      // x * q is exact in fp32; d * (x * q) too for 4-bit q (aierun/ops/quant.py).
      const aie::accum<accfloat, BLOCK> xq =
          aie::mul(quants(w + n * ROW_BYTES + b * BLOCK * BITS / 8), xb);
      acc = aie::mac(acc, xq.to_vector<float>(), d[n * BLOCKS + b]);
#if AIEK_WFMT == 2
      const float *m = d + AIEK_TN * BLOCKS;  // q4_1's block minimums, after the scales
      acc = aie::mac(acc, aie::accum<accfloat, BLOCK>(xb).to_vector<float>(), m[n * BLOCKS + b]);
#endif
    }
    aie::store_v(s->partial[n], acc.to_vector<float>());
  }
}
#endif

// Counts the k tile; after the block's last one reduces its rows into s->sums (the
// counter starting over for the next block) and returns true.
static inline bool block_done(State *s) {
  if (++s->k_tile < K_TILES) return false;
  s->k_tile = 0;
  set_round_to_nearest_even();
  for (int n = 0; n < AIEK_TN; ++n)  // one reduction per row and block: lanes, then halves (S)
    s->sums[n] = aie::reduce_add(aie::load_v<LANES>(s->partial[n]));
  return true;
}

template <typename out_t>
static inline void finish(out_t *y, State *s) {
  if (!block_done(s)) return;
  for (int n = 0; n < AIEK_TN; n += HALF) store_as<HALF>(y + n, aie::load_v<HALF>(s->sums + n));
}

#define AIEK_ENTRY(out) AIEK_CAT(AIEK_CAT(AIEK_CAT(AIEK_CAT(gemv_, AIEK_FMT), _), AIEK_SUFFIX), out)

extern "C" void AIEK_ENTRY(_bf16)(const bfloat16 *x, const w_t *w, bfloat16 *y, State *s) {
  accumulate(x, w, s);
  finish(y, s);
}

extern "C" void AIEK_ENTRY(_f32)(const bfloat16 *x, const w_t *w, float *y, State *s) {
  accumulate(x, w, s);
  finish(y, s);
}

#if AIEK_SWIGLU
// A block is HALF gate rows then the same HALF rows of up; a gets their silu(g) * u, g
// and u first rounded to bf16: the values the separate GEMVs wrote for eltwise.cc.
static_assert(AIEK_TN == 2 * HALF, "a SwiGLU block is HALF gate rows and HALF up rows");
extern "C" void AIEK_ENTRY(_swiglu)(const bfloat16 *x, const w_t *w, bfloat16 *a, State *s) {
  accumulate(x, w, s);
  if (!block_done(s)) return;
  const aie::vector<float, HALF> gate = round_bf16(aie::load_v<HALF>(s->sums));
  const aie::vector<float, HALF> up = round_bf16(aie::load_v<HALF>(s->sums + HALF));
  store_as<HALF>(a, silu_mul(gate, up, aie::broadcast<float, HALF>(1.0f)));
}
#endif

#if AIEK_RMSNORM == 1
extern "C" void AIEK_ENTRY(_rmsnorm)(const float *x, const float *norm, bfloat16 *xn) {
  set_round_to_nearest_even();
  rms_normalize<AIEK_K>(x, norm, xn, AIEK_EPS);
}
#elif AIEK_RMSNORM == 2
extern "C" void AIEK_ENTRY(_add_rmsnorm)(const float *o, const float *x, const float *norm,
                                         float *h, bfloat16 *xn) {
  set_round_to_nearest_even();
  for (int i = 0; i < AIEK_K; i += HALF)
    aie::store_v(h + i, aie::add(aie::load_v<HALF>(o + i), aie::load_v<HALF>(x + i)));
  rms_normalize<AIEK_K>(h, norm, xn, AIEK_EPS);
}
#endif

#if AIEK_ROUNDED
extern "C" void AIEK_ENTRY(_rounded)(const bfloat16 *x, const w_t *w, float *y, State *s) {
  accumulate(x, w, s);
  if (!block_done(s)) return;
  for (int n = 0; n < AIEK_TN; n += HALF)
    aie::store_v(y + n, round_bf16(aie::load_v<HALF>(s->sums + n)));
}
#endif
