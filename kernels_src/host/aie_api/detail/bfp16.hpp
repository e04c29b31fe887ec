// bfp16ebs8 blocks of the host model: what `to_v64bfp16ebs8` makes of an fp32
// accumulator (accum::to_vector<bfp16ebs8>, vector.hpp) and the bfp16 mmul multiplies
// (mmul.hpp; aie_api aie2p/mmul_bfp16_bfp16.hpp `mac_8x8_8x8T`).
//
// The format (mlir-aie programming_examples/ml/block_datatypes: README "8 mantissas per
// block, 8 mantissa bits and 8 shared exponent bits", helper.h floatToBfp16 and
// bfp16ebs8ToFloat): a block of 8 values stores the largest biased fp32 exponent field of
// its values, E, and per value a two's complement int8 m; the value is m * 2^(E - 133),
// so the largest magnitude keeps its leading bit and 6 fraction bits. The conversion
// rounds x * 2^(133 - E) to an integer by the core's rounding mode (mlir-aie
// aie_kernels/aie2p/mm.cc: "that conversion follows the core rounding mode"; the default,
// floor, is helper.h's two's complement truncation). Not documented, modelled (⚠):
// a positive value that rounds up to 128 saturates to 127; subnormal inputs count as
// zero (the AIE-ML float datapath has no denormals, AMD AM020); a block holding an
// infinity or NaN converts to NaNs.
//
// A product of two blocks sums the 8 int8 x int8 products exactly (at most 2^17) and
// scales the sum by 2^(Ea + Eb - 266) (⚠ an exact integer dot product per block, as
// fixed-point mantissas suggest; the hardware's adder tree is not documented).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "scalar.hpp"

namespace aie::detail {

struct bfp16_block {
  static constexpr unsigned size = 8;
  static constexpr int mantissa_shift = 133;  // fp32 bias 127 + 6 fraction bits

  std::array<std::int8_t, size> mantissa{};
  int exponent = 0;  // the shared biased exponent field E
  bool finite = true;

  // Values v[0], v[stride], ..., v[7 * stride], rounded by `mode`.
  static bfp16_block from_floats(const float *v, unsigned stride, rounding_mode mode) {
    bfp16_block block;
    std::array<float, size> x;
    for (unsigned i = 0; i < size; ++i) {
      const float value = v[i * stride];
      block.finite = block.finite && std::isfinite(value);
      x[i] = std::fabs(value) < std::numeric_limits<float>::min() ? 0.0f : value;
      block.exponent = std::max(block.exponent, (std::bit_cast<int>(x[i]) >> 23) & 0xFF);
    }
    if (!block.finite) return block;
    for (unsigned i = 0; i < size; ++i) {
      const double scaled = std::ldexp(double(x[i]), mantissa_shift - block.exponent);
      const double m = round_to_integer(scaled, mode);
      block.mantissa[i] = static_cast<std::int8_t>(std::clamp(m, -128.0, 127.0));
    }
    return block;
  }

  // The exact sum of the 8 products of two blocks' values (NaN if either is not finite).
  friend double dot(const bfp16_block &a, const bfp16_block &b) {
    if (!a.finite || !b.finite) return std::numeric_limits<double>::quiet_NaN();
    int sum = 0;
    for (unsigned i = 0; i < size; ++i) sum += int(a.mantissa[i]) * int(b.mantissa[i]);
    return std::ldexp(double(sum), a.exponent + b.exponent - 2 * mantissa_shift);
  }
};

}  // namespace aie::detail
