// aie::mmul of the host model: bfloat16 x bfloat16 -> fp32 blocks.
#pragma once

#include "vector.hpp"

namespace aie {

namespace detail {
// The bfloat16 x bfloat16 shapes aie_api offers on XDNA 2 (detail/mmul.hpp table):
// 4x8x4, 4x8x8, 8x8x4 and 8x1x8; 8x8x8 only through bfp16 emulation
// (AIE_API_EMULATE_BFLOAT16_MMUL_WITH_BFP16), which changes the numerics and which the
// host model does not model.
template <unsigned M, unsigned K, unsigned N>
inline constexpr bool is_xdna2_bf16_mmul = (M == 4 && K == 8 && N == 4) ||
                                           (M == 4 && K == 8 && N == 8) ||
                                           (M == 8 && K == 8 && N == 4) ||
                                           (M == 8 && K == 1 && N == 8);
}  // namespace detail

// C[M x N] (+)= A[M x K] B[K x N], all row-major in their vectors. Each output lane
// accumulates its K products in k order in fp32: the XDNA 2 bf16 shapes are emulated
// with one lane-wise multiply-accumulate per k (aie_api aie2p/emulated_mmul_intrinsics.hpp,
// as reference/aie2p-facts.md reads it). bf16 x bf16 products are exact in fp32.
template <unsigned M, unsigned K, unsigned N, typename TypeA, typename TypeB,
          typename AccumTag = accauto>
class mmul {
  static_assert(std::is_same_v<TypeA, bfloat16> && std::is_same_v<TypeB, bfloat16>,
                "the host aie_api models bfloat16 x bfloat16 mmul only");
  static_assert(std::is_same_v<AccumTag, accauto> || std::is_same_v<AccumTag, accfloat>,
                "bfloat16 mmul accumulates in accfloat");
  static_assert(detail::is_xdna2_bf16_mmul<M, K, N>,
                "this mmul shape does not exist for bfloat16 on XDNA 2 (AIE2P): use 4x8x4, "
                "4x8x8, 8x8x4 or 8x1x8");

 public:
  static constexpr unsigned size_A = M * K, size_B = K * N, size_C = M * N;

  mmul() = default;
  explicit mmul(const accum<accfloat, size_C> &c) : c_(c) {}

  void mul(const vector<TypeA, size_A> &a, const vector<TypeB, size_B> &b) {
    multiply(a, b, false);
  }
  void mac(const vector<TypeA, size_A> &a, const vector<TypeB, size_B> &b) {
    multiply(a, b, true);
  }

  template <typename T>
  vector<T, size_C> to_vector() const {
    return c_.template to_vector<T>();
  }
  accum<accfloat, size_C> to_accum() const { return c_; }

 private:
  void multiply(const vector<TypeA, size_A> &a, const vector<TypeB, size_B> &b, bool accumulate) {
    for (unsigned m = 0; m < M; ++m)
      for (unsigned n = 0; n < N; ++n) {
        float &c = c_.host_lane(m * N + n);
        for (unsigned k = 0; k < K; ++k) {
          const float product = float(a[m * K + k]) * float(b[k * N + n]);
          c = (accumulate || k > 0) ? c + product : product;
        }
      }
  }

  accum<accfloat, size_C> c_;
};

}  // namespace aie
