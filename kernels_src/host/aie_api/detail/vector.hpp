// aie::vector and aie::accum of the host model: plain arrays of lanes.
#pragma once

#include <array>
#include <cassert>
#include <limits>

#include "block_vector.hpp"
#include "counts.hpp"
#include "scalar.hpp"

namespace aie {

namespace detail {
template <typename T>
inline constexpr bool is_float_element = std::is_same_v<T, float> || std::is_same_v<T, bfloat16>;
template <typename T>
inline constexpr bool is_nibble = std::is_same_v<T, int4> || std::is_same_v<T, uint4>;
template <typename T>
inline constexpr bool is_int_element =
    is_nibble<T> || std::is_same_v<T, int8> || std::is_same_v<T, uint8>;
template <typename T>
inline constexpr bool is_element = is_float_element<T> || is_int_element<T>;
// Bits of one lane in memory and in a register (a nibble is 4).
template <typename T>
inline constexpr unsigned element_bits = is_nibble<T> ? 4 : sizeof(T) * 8;

// aie_api leaves a default-constructed vector or accumulator undefined; the host model
// fills it with NaN, so a kernel that reads one before writing it shows it.
template <typename T>
inline T poison() {
  if constexpr (is_float_element<T>)
    return T(std::numeric_limits<float>::quiet_NaN());
  else
    return T(5);  // integer lanes have no NaN: a value no test expects
}
}  // namespace detail

// AIE2P vectors are 128 to 1024 bits natively, and "larger vectors are also supported by
// transparently maintaining the required number of native vectors" (aie_api aie_doc.hpp);
// the host model covers float and bfloat16 lanes, the types our kernels compute in.
template <typename T, unsigned N>
class vector {
  static_assert(detail::is_element<T>,
                "the host aie_api models float, bfloat16 and 8- and 4-bit integer vectors");
  static_assert(N * detail::element_bits<T> >= 128 && (N & (N - 1)) == 0,
                "AIE2P vectors are 128, 256, 512 or 1024 bits, or several of the largest");

 public:
  using value_type = T;
  static constexpr unsigned size() { return N; }

  vector() { lanes_.fill(detail::poison<T>()); }

  T operator[](unsigned i) const {
    assert(i < N);
    return lanes_[i];
  }
  T &operator[](unsigned i) {
    assert(i < N);
    return lanes_[i];
  }

  // Sub-vector `index` of M lanes (lanes index*M .. index*M+M-1). One register move
  // each, as insert (AMD AM020, Register Move Functionality: "Move one 128-bit
  // V-register to an arbitrary V-register in one cycle").
  template <unsigned M>
  vector<T, M> extract(unsigned index) const {
    static_assert(N % M == 0, "extract: the part must divide the vector");
    assert(index < N / M);
    detail::count::add(detail::count::move);
    vector<T, M> part;
    for (unsigned i = 0; i < M; ++i) part[i] = lanes_[index * M + i];
    return part;
  }

  template <unsigned M>
  vector &insert(unsigned index, const vector<T, M> &part) {
    static_assert(N % M == 0, "insert: the part must divide the vector");
    assert(index < N / M);
    detail::count::add(detail::count::move);
    for (unsigned i = 0; i < M; ++i) lanes_[index * M + i] = part[i];
    return *this;
  }

 private:
  std::array<T, N> lanes_;
};

// An accumulator of N fp32 lanes (accfloat: the only accumulator the host models).
template <typename Tag, unsigned N>
class accum {
  static_assert(std::is_same_v<Tag, accfloat>, "the host aie_api models accfloat accumulators");

 public:
  using value_type = Tag;
  static constexpr unsigned size() { return N; }

  accum() { lanes_.fill(detail::poison<float>()); }
  template <typename T>
  explicit accum(const vector<T, N> &v) {
    from_vector(v);
  }

  // Widening bf16 or fp32 lanes is exact: an up-shift (ups) per native accumulator.
  template <typename T>
  accum &from_vector(const vector<T, N> &v) {
    detail::count::add(detail::count::convert, detail::count::fp32_ops(N));
    for (unsigned i = 0; i < N; ++i) lanes_[i] = float(v[i]);
    return *this;
  }

  // To fp32 lanes unchanged, or to bf16 lanes rounded by the current rounding mode: a
  // shift-round-saturate (srs) per native accumulator. To bfp16ebs8: blocks of 8
  // consecutive lanes, rounded by the current mode, one ::to_v64bfp16ebs8 per 64 lanes
  // (aie_api aie2p/mmul_bf16_bf16.hpp issues it on a 64-lane accumulator).
  template <typename T>
  auto to_vector() const {
    if constexpr (std::is_same_v<T, bfp16ebs8>) {
      detail::count::add(detail::count::convert, detail::count::units(N, 64));
      block_vector<bfp16ebs8, N> v;
      const rounding_mode mode = get_rounding();
      for (unsigned i = 0; i < v.blocks; ++i)
        v.block(i) = detail::bfp16_block::from_floats(&lanes_[i * v.block(i).size], 1, mode);
      return v;
    } else {
      detail::count::add(detail::count::convert, detail::count::fp32_ops(N));
      vector<T, N> v;
      for (unsigned i = 0; i < N; ++i) v[i] = T(lanes_[i]);
      return v;
    }
  }

  // Host-model access for the functions in aie.hpp (aie_api accumulators have none).
  float host_lane(unsigned i) const { return lanes_[i]; }
  float &host_lane(unsigned i) { return lanes_[i]; }

 private:
  std::array<float, N> lanes_;
};

// A lane mask of N bits, bit i for lane i (aie_api mask.hpp); the host model keeps up to
// 32 lanes, built from one 32-bit word.
template <unsigned N>
class mask {
  static_assert(N <= 32, "the host aie_api models masks of up to 32 lanes");

 public:
  static constexpr unsigned size() { return N; }

  explicit mask(bool all = false) : bits_(all ? all_lanes : 0u) {}
  static mask from_uint32(std::uint32_t word) {
    mask m;
    m.bits_ = word & all_lanes;
    return m;
  }
  bool test(unsigned i) const {
    assert(i < N);
    return (bits_ >> i) & 1u;
  }

 private:
  static constexpr std::uint32_t all_lanes = N == 32 ? ~0u : (1u << N) - 1;
  std::uint32_t bits_;
};

}  // namespace aie
