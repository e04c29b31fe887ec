// Shared by every kernel in kernels_src/: symbol composition from -D parameters,
// the rounding mode, and bf16/fp32 loads into fp32 vectors.
//
// Every -D parameter and every macro of ours is named AIEK_*: a macro named E or K
// would rewrite identifiers inside the aie_api and libstdc++ headers.
//
// AIE2P arithmetic facts these kernels rely on (docs/hardware.md, "Stack H. AIE2P arithmetic"),
// and what of each the numpy emulation (aierun/ops) reproduces:
// (R) float -> bf16 conversions round toward minus infinity unless the rounding
//     mode register says otherwise: every kernel calls set_round_to_nearest_even()
//     first, matching numpy/ml_dtypes (aierun.ops.numerics.to_bf16). Emulated.
// (M) there is no fp32 multiplier: fp32 x fp32 products are built from bf16 limbs
//     and may differ from IEEE in the last bit. Not emulated (numpy's IEEE products).
// (S) vector reductions accumulate per lane, then halve the lanes pairwise. Not
//     emulated: numpy's summation order differs in the last bits.
// (L) exp: XDNA 2's exp2 returns bf16 (aie_api's exp2 requires a bfloat16 result on
//     XDNA 2; upstream aie_kernels/aie2p/softmax.cc does the same), so exp_bf16 below
//     is bf16-precise. Emulated: aierun.ops.numerics.exp_bf16. The reciprocal and the
//     inverse square root are aie_api's scalar float inv / invsqrt (per lane for a
//     vector), whose precision aie_api does not document. Not emulated: aierun/ops and
//     the host model (kernels_src/host) take IEEE division and 1/sqrt.
// (B) bf16 matmuls are real bf16 x bf16 -> fp32, except where a GEMM launch asks for
//     bfp16 (gemm.cc -D AIEK_MMA=bfp16 converts both operands to bfp16ebs8 for the
//     native 8x8x8 bfp16 mmul: blocks of 8 sharing an exponent; aiebuild/specs.py
//     GEMM_MMA says which and why). Emulated both ways: aierun.ops.numerics.to_bfp16, fp32 accumulation.
#pragma once

#include <aie_api/aie.hpp>

#define AIEK_CAT_(a, b) a##b
#define AIEK_CAT(a, b) AIEK_CAT_(a, b)
#define AIEK_CAT3(a, b, c) AIEK_CAT(AIEK_CAT(a, b), c)
#define AIEK_CAT5(a, b, c, d, e) AIEK_CAT(AIEK_CAT3(a, b, c), AIEK_CAT(d, e))

static inline void set_round_to_nearest_even() {
  aie::set_rounding(aie::rounding_mode::conv_even);  // fact (R)
}

// A bf16 vector as fp32 (exact).
template <unsigned N>
static inline aie::vector<float, N> to_f32(aie::vector<bfloat16, N> v) {
  aie::accum<accfloat, N> widened;
  widened.from_vector(v);
  return widened.template to_vector<float>();
}

// N elements of bf16 or fp32 as an fp32 vector.
template <unsigned N>
static inline aie::vector<float, N> load_f32(const float *p) {
  return aie::load_v<N>(p);
}
template <unsigned N>
static inline aie::vector<float, N> load_f32(const bfloat16 *p) {
  return to_f32(aie::load_v<N>(p));
}

// e^x per lane as 2^(x * log2 e): an fp32 product (M), then exp2, whose result is
// bf16 on XDNA 2 (L) and rounds by the current mode (R).
template <unsigned N>
static inline aie::vector<bfloat16, N> exp_to_bf16(aie::vector<float, N> x) {
  const float log2e = 1.4426950408889634f;
  return aie::exp2<bfloat16>(aie::mul(x, log2e).template to_vector<float>());
}
// The same e^x widened back to fp32 (exact).
template <unsigned N>
static inline aie::vector<float, N> exp_bf16(aie::vector<float, N> x) {
  return to_f32(exp_to_bf16(x));
}

// An fp32 vector as a bf16 buffer would hold it: rounded by the current mode (R), widened
// back exactly.
template <unsigned N>
static inline aie::vector<float, N> round_bf16(aie::vector<float, N> v) {
  aie::accum<accfloat, N> wide;
  wide.from_vector(v);
  return to_f32(wide.template to_vector<bfloat16>());
}

// SwiGLU's silu(g) * u per lane, as g * inv(1 + e^-g) * u: the bf16-precise exp and the
// scalar inv per lane (L), fp32 products (M). eltwise.cc's silu_mul and gemv.cc's
// SwiGLU epilogue both compute it so. `one` is 1.0 in every lane, broadcast by the
// caller once outside its loop.
template <unsigned N>
static inline aie::vector<float, N> silu_mul(aie::vector<float, N> gate, aie::vector<float, N> up,
                                             aie::vector<float, N> one) {
  auto sigmoid = aie::inv(aie::add(one, exp_bf16<N>(aie::neg(gate))));
  auto silu = aie::mul(gate, sigmoid).template to_vector<float>();
  return aie::mul(silu, up).template to_vector<float>();
}

// A ROWS x COLS block of a row-major matrix with `ld` columns starting at p, as one
// row-major vector (an mmul operand or result), and back.
template <unsigned ROWS, unsigned COLS, typename T>
static inline aie::vector<T, ROWS * COLS> load_block(const T *p, int ld) {
  aie::vector<T, ROWS * COLS> block;
  for (unsigned r = 0; r < ROWS; ++r) block.insert(r, aie::load_v<COLS>(p + r * ld));
  return block;
}
template <unsigned ROWS, unsigned COLS, typename T>
static inline void store_block(T *p, int ld, aie::vector<T, ROWS * COLS> block) {
  for (unsigned r = 0; r < ROWS; ++r) aie::store_v(p + r * ld, block.template extract<COLS>(r));
}

// Store an fp32 vector as bf16 (rounded to nearest even after the mode is set) or fp32.
template <unsigned N>
static inline void store_as(bfloat16 *p, aie::vector<float, N> v) {
  aie::accum<accfloat, N> wide;
  wide.from_vector(v);
  aie::store_v(p, wide.template to_vector<bfloat16>());
}
template <unsigned N>
static inline void store_as(float *p, aie::vector<float, N> v) {
  aie::store_v(p, v);
}

// RMSNorm of one row of E values: y = x / sqrt(mean(x^2) + eps) * w, per-lane partial
// sums of squares (S), the scalar inverse square root (L), fp32 products (M), y rounded
// to bf16 (R; the caller has set the mode). w is bf16, or fp32 holding bf16 values
// (widened exactly). rmsnorm.cc's launches and gemv.cc's RMSNorm prologue both
// normalize so.
template <int E, typename x_t, typename w_t>
static inline void rms_normalize(const x_t *x, const w_t *w, bfloat16 *y, float eps) {
  constexpr int lanes = 16;
  static_assert(E % lanes == 0, "the row length must be a multiple of 16");
  aie::accum<accfloat, lanes> squares = aie::zeros<accfloat, lanes>();
  for (int i = 0; i < E; i += lanes) {
    aie::vector<float, lanes> v = load_f32<lanes>(x + i);
    squares = aie::mac(squares, v, v);
  }
  const float mean = aie::reduce_add(squares.template to_vector<float>()) / float(E);
  const float scale = aie::invsqrt(mean + eps);
  for (int i = 0; i < E; i += lanes) {
    aie::vector<float, lanes> v = aie::mul(load_f32<lanes>(x + i), scale).template to_vector<float>();
    store_as<lanes>(y + i, aie::mul(v, load_f32<lanes>(w + i)).template to_vector<float>());
  }
}
