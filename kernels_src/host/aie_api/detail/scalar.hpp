// The host model's scalar layer: the rounding mode register, bfloat16, and the
// chess/Peano loop annotations (no-ops here).
#pragma once

#include <bit>
#include <cmath>
#include <compare>
#include <cstdint>
#include <type_traits>

#include "counts.hpp"

// Loop annotations the AIE compilers read; the host compiler has nothing to do with them.
#define chess_prepare_for_pipelining
#define chess_flatten_loop
#define chess_loop_range(...)
#define chess_unroll_loop(...)

namespace aie {

// aie_api's rounding modes (aie_types.hpp; AIE2P has platform version 200, so the two
// symmetric_floor / symmetric_ceil modes exist). They apply to every conversion to a
// narrower type: here fp32 -> bfloat16.
enum class rounding_mode : unsigned {
  floor,            // toward minus infinity: the AIE2P default after a core starts
  ceil,             // toward plus infinity
  positive_inf,     // nearest, ties toward plus infinity
  negative_inf,     // nearest, ties toward minus infinity
  symmetric_inf,    // nearest, ties away from zero
  symmetric_zero,   // nearest, ties toward zero
  conv_even,        // nearest, ties to even (IEEE's default, numpy's and ml_dtypes')
  conv_odd,         // nearest, ties to odd
  symmetric_floor,  // toward zero
  symmetric_ceil,   // away from zero
};

namespace detail {
// The core's rounding mode register. One per loaded kernel library (defined in
// host_runtime.cc, hidden so that two loaded libraries do not share it), reset to
// floor when the library loads, as a core starts.
extern rounding_mode tile_rounding __attribute__((visibility("hidden")));

// Whether rounding an inexact magnitude goes up (away from zero) in `mode`, given how
// the discarded part compares with half a unit of the kept part.
constexpr bool rounds_magnitude_up(rounding_mode mode, bool negative,
                                   std::partial_ordering rest_vs_half, bool kept_is_odd) {
  switch (mode) {
    case rounding_mode::floor: return negative;
    case rounding_mode::ceil: return !negative;
    case rounding_mode::symmetric_floor: return false;
    case rounding_mode::symmetric_ceil: return true;
    default: break;
  }
  if (rest_vs_half != 0) return rest_vs_half > 0;  // not a tie: the nearest
  switch (mode) {
    case rounding_mode::positive_inf: return !negative;
    case rounding_mode::negative_inf: return negative;
    case rounding_mode::symmetric_inf: return true;
    case rounding_mode::symmetric_zero: return false;
    case rounding_mode::conv_even: return kept_is_odd;
    default: return !kept_is_odd;  // conv_odd
  }
}

// fp32 -> bf16 bits: the top 16 bits of the fp32 value, rounded by `mode`. Rounding
// the magnitude up may carry into the exponent (and to infinity), as in IEEE. Subnormal
// inputs are rounded like normal ones: whether AIE2P flushes them is not modelled.
inline std::uint16_t round_to_bf16(float value, rounding_mode mode) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t kept = bits >> 16, rest = bits & 0xFFFF;
  if (std::isnan(value)) return static_cast<std::uint16_t>(kept | 0x0040);  // stays a NaN
  if (rest == 0) return static_cast<std::uint16_t>(kept);
  const bool up = rounds_magnitude_up(mode, bits >> 31, rest <=> 0x8000u, kept & 1);
  return static_cast<std::uint16_t>(kept + up);
}

// A finite `value` rounded to an integer by `mode` (a magnitude rounded to zero keeps
// its sign: -0.0).
inline double round_to_integer(double value, rounding_mode mode) {
  const double magnitude = std::fabs(value), kept = std::floor(magnitude);
  const double rest = magnitude - kept;  // exact: the fraction bits of the magnitude
  if (rest == 0) return value;
  const bool odd = std::fmod(kept, 2.0) == 1.0;
  return std::copysign(kept + rounds_magnitude_up(mode, value < 0, rest <=> 0.5, odd), value);
}
}  // namespace detail

// A control register write: one scalar issue (counts.hpp).
inline void set_rounding(rounding_mode mode) {
  detail::count::add(detail::count::scalar);
  detail::tile_rounding = mode;
}
inline rounding_mode get_rounding() { return detail::tile_rounding; }

}  // namespace aie

// bfloat16 with the NPU's bits (the top half of an fp32), at global scope as the AIE
// compilers declare it. From fp32 it rounds by the current rounding mode; to fp32 it is
// exact. Default construction leaves it uninitialized, like a built-in scalar.
struct bfloat16 {
  std::uint16_t bits;

  bfloat16() = default;
  bfloat16(float value) : bits(aie::detail::round_to_bf16(value, aie::get_rounding())) {}
  operator float() const { return std::bit_cast<float>(std::uint32_t(bits) << 16); }

  static bfloat16 from_bits(std::uint16_t raw) {
    bfloat16 b;
    b.bits = raw;
    return b;
  }
};
static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>);

// Accumulator tags (global, as in aie_api): accfloat is fp32 lanes; accauto lets mmul
// pick (fp32 for bfloat16 operands).
// The integer lanes of the quantized weights' kernels (gemv.cc): int8 / uint8 as the
// built-in types, int4 / uint4 one lane per object here (aie_api packs two per byte in
// memory, lane 2i in the low nibble; load_v reads them packed).
using int8 = std::int8_t;
using uint8 = std::uint8_t;
struct int4 {
  std::int8_t value;
  int4() = default;
  constexpr int4(int v) : value(std::int8_t(v)) {}
  constexpr operator int() const { return value; }
};
struct uint4 {
  std::uint8_t value;
  uint4() = default;
  constexpr uint4(int v) : value(std::uint8_t(v)) {}
  constexpr operator int() const { return value; }
};

struct accfloat {};
struct accauto {};
