// aie::mmul of the host model: bfloat16 x bfloat16 and bfp16ebs8 x bfp16ebs8 -> fp32 blocks.
#pragma once

#include "bfp16.hpp"
#include "vector.hpp"

namespace aie {

namespace detail {
// The bfloat16 x bfloat16 shapes aie_api documents on XDNA 2 (detail/mmul.hpp table:
// 8x8x4, 4x8x8, 4x8x4, 8x1x8; 8x8x8 only through AIE_API_EMULATE_BFLOAT16_MMUL_WITH_BFP16,
// which the host model does not offer: our kernels call the native bfp16 mmul below).
template <unsigned M, unsigned K, unsigned N>
inline constexpr bool is_xdna2_bf16_mmul =
    (M == 4 && K == 8 && N == 4) || (M == 4 && K == 8 && N == 8) ||
    (M == 8 && K == 8 && N == 4) || (M == 8 && K == 1 && N == 8);
}  // namespace detail

// C[M x N] (+)= A[M x K] B[K x N], all row-major in their vectors.
// bf16: each output lane accumulates its K products in k order in fp32: the XDNA 2 bf16
// shapes are emulated with one lane-wise multiply-accumulate per k (aie_api
// aie2p/emulated_mmul_intrinsics.hpp, as docs/hardware.md section 9 reads it). bf16 x bf16
// products are exact in fp32.
template <unsigned M, unsigned K, unsigned N, typename TypeA, typename TypeB,
          typename AccumTag = accauto>
class mmul {
  static_assert(std::is_same_v<TypeA, bfloat16> && std::is_same_v<TypeB, bfloat16>,
                "the host aie_api models bfloat16 x bfloat16 mmul only");
  static_assert(std::is_same_v<AccumTag, accauto> || std::is_same_v<AccumTag, accfloat>,
                "bfloat16 mmul accumulates in accfloat");
  static_assert(detail::is_xdna2_bf16_mmul<M, K, N>,
                "this bfloat16 mmul shape is not modelled for XDNA 2 (AIE2P): use 4x8x4, "
                "4x8x8, 8x8x4, 8x1x8, or the bfp16ebs8 8x8x8 mmul");

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
    count(accumulate);
    for (unsigned m = 0; m < M; ++m)
      for (unsigned n = 0; n < N; ++n) {
        float &c = c_.host_lane(m * N + n);
        for (unsigned k = 0; k < K; ++k) {
          const float product = float(a[m * K + k]) * float(b[k * N + n]);
          c = (accumulate || k > 0) ? c + product : product;
        }
      }
  }

  // What aie_api issues for one bf16 mul / mac on AIE2P (aie2p/emulated_mmul_intrinsics.hpp
  // `mac_4x8_8x8_bf16`): xt = ::shuffle(x, x, T16_4x8), then per k an
  // extract_v4bfloat16_broadcast + ::shuffle of x and an extract_v8bfloat16_broadcast of y
  // (17 shuffles, 16 broadcasts), and one 32-lane mac_elem_32 per k, each taking the
  // previous one's accumulator. Other emulated shapes are counted the same way per
  // 32-lane MAC (our kernels use 4x8x8 only).
  static void count(bool accumulate) {
    namespace c = detail::count;
    constexpr unsigned macs = M * K * N / 32;
    c::add(c::alu, 2 * macs + 1);
    c::add(c::move, 2 * macs);
    c::add(c::mac, macs);
    c::add(c::mac_dependent, accumulate ? macs : macs - 1);
  }

  accum<accfloat, size_C> c_;
};

// The native bfp16 mmul of AIE2P, 8x8x8 on bfp16ebs8 operands (aie_api
// aie2p/mmul_bfp16_bfp16.hpp: mul is one ::mul_8x8_8x8T(a, b), mac one
// ::mac_8x8_8x8T_conf on the accumulator). A holds the 8 rows of A, B the 8 columns of
// B (the "T": row n of the block vector is column n), each one bfp16 block along k.
// C[m][n] adds the exact product of block m of A and block n of B in fp32 (bfp16.hpp).
// Each mmul tracks its accumulator, so a MAC is dependent only when the previous MAC
// wrote its input (counts.hpp `tracked_mac`): interleaved blocks hide the latency.
template <typename AccumTag>
class mmul<8, 8, 8, bfp16ebs8, bfp16ebs8, AccumTag> {
  static_assert(std::is_same_v<AccumTag, accauto> || std::is_same_v<AccumTag, accfloat>,
                "bfp16 mmul accumulates in accfloat");

 public:
  static constexpr unsigned size_A = 64, size_B = 64, size_C = 64;
  using operand = block_vector<bfp16ebs8, 64>;

  mmul() = default;
  explicit mmul(const accum<accfloat, size_C> &c) : c_(c) {}

  void mul(const operand &a, const operand &b) { multiply(a, b, false); }
  void mac(const operand &a, const operand &b) { multiply(a, b, true); }

  template <typename T>
  vector<T, size_C> to_vector() const {
    return c_.template to_vector<T>();
  }
  accum<accfloat, size_C> to_accum() const { return c_; }

 private:
  void multiply(const operand &a, const operand &b, bool accumulate) {
    if (!accumulate) last_ = 0;
    detail::count::tracked_mac(last_);
    for (unsigned m = 0; m < 8; ++m)
      for (unsigned n = 0; n < 8; ++n) {
        const float product = float(dot(a.block(m), b.block(n)));  // exact (bfp16.hpp)
        float &c = c_.host_lane(m * 8 + n);
        c = accumulate ? c + product : product;
      }
  }

  accum<accfloat, size_C> c_;
  std::uint64_t last_ = 0;  // the MAC that last wrote c_ (counts.hpp `tracked_mac`)
};

}  // namespace aie
