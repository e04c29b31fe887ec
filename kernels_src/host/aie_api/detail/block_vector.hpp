// bfp16ebs8 vectors of the host model: aie::block_vector<bfp16ebs8, N> and the buffer
// streams that move them to and from core memory, as aie_api offers them on AIE2P
// (mlir-aie programming_examples/basic/block_datatypes/bfp_conversion/kernel.cc: "the
// bfp16ebs8 type is not necessarily aligned and the memory interface must be adapted
// through the use of buffer streams"; a block of 8 values is 8 int8 mantissas and one
// shared 8-bit exponent, block_datatypes README).
#pragma once

#include <array>
#include <cstdint>

#include "bfp16.hpp"
#include "counts.hpp"

// One bfp16ebs8 element in memory: a block of 8 values, 9 bytes (IRON moves bfp16ebs8
// data in these units, bfp_conversion/kernel.cc). An exponent field of 255 marks a
// block that held an infinity or NaN (bfp16.hpp: its exponent is the largest field).
struct bfp16ebs8 {
  std::int8_t mantissa[8];
  std::uint8_t exponent;
};
static_assert(sizeof(bfp16ebs8) == 9, "a bfp16ebs8 block is 9 bytes");

namespace aie {

template <typename T, unsigned N>
class block_vector;

// N values in N / 8 bfp16 blocks (AIE2P's v64bfp16ebs8 is N = 64: 576 bits).
template <unsigned N>
class block_vector<bfp16ebs8, N> {
  static_assert(N % detail::bfp16_block::size == 0, "bfp16ebs8 vectors hold whole blocks");

 public:
  static constexpr unsigned blocks = N / detail::bfp16_block::size;
  static constexpr unsigned bits = blocks * 72;
  static constexpr unsigned size() { return N; }

  const detail::bfp16_block &block(unsigned i) const { return blocks_[i]; }
  detail::bfp16_block &block(unsigned i) { return blocks_[i]; }

 private:
  std::array<detail::bfp16_block, blocks> blocks_;
};

// A stream over consecutive bfp16ebs8 vectors in memory. A vector of 576 bits is more
// than one 512-bit access: counted as whole 512-bit accesses (counts.hpp `access`).
template <typename T, unsigned N>
class block_vector_input_buffer_stream;
template <typename T, unsigned N>
class block_vector_output_buffer_stream;

template <unsigned N>
class block_vector_input_buffer_stream<bfp16ebs8, N> {
 public:
  explicit block_vector_input_buffer_stream(const bfp16ebs8 *p) : p_(p) {}

  block_vector_input_buffer_stream &operator>>(block_vector<bfp16ebs8, N> &v) {
    detail::count::access(false, block_vector<bfp16ebs8, N>::bits);
    for (unsigned i = 0; i < v.blocks; ++i, ++p_) {
      detail::bfp16_block &b = v.block(i);
      for (unsigned j = 0; j < b.size; ++j) b.mantissa[j] = p_->mantissa[j];
      b.exponent = p_->exponent;
      b.finite = p_->exponent != 255;
    }
    return *this;
  }

 private:
  const bfp16ebs8 *p_;
};

template <unsigned N>
class block_vector_output_buffer_stream<bfp16ebs8, N> {
 public:
  explicit block_vector_output_buffer_stream(bfp16ebs8 *p) : p_(p) {}

  block_vector_output_buffer_stream &operator<<(const block_vector<bfp16ebs8, N> &v) {
    detail::count::access(true, block_vector<bfp16ebs8, N>::bits);
    for (unsigned i = 0; i < v.blocks; ++i, ++p_) {
      const detail::bfp16_block &b = v.block(i);
      for (unsigned j = 0; j < b.size; ++j) p_->mantissa[j] = b.mantissa[j];
      p_->exponent = static_cast<std::uint8_t>(b.finite ? b.exponent : 255);
    }
    return *this;
  }

 private:
  bfp16ebs8 *p_;
};

}  // namespace aie
