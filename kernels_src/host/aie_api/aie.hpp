// A host (x86/arm) model of the subset of aie_api our AIE2P kernels use, so that
// kernels_src/*.cc compile unchanged with the system C++ compiler and run in the
// dataflow simulator (aiebuild/sim). NOT the NPU path: Peano builds use the real
// aie_api, and this directory is never on their include path.
//
// Written from aie_api's documented behaviour (Xilinx/aie_api aie.hpp and its docs),
// keeping AIE2P's constraints as compile errors (exp2's bf16 result, the bf16 mmul
// shapes, vector widths) and modelling the arithmetic the kernels rely on
// (kernels_src/aie_kernel_common.h facts): conversions to bf16 round by the core's
// rounding mode register (default floor); vector reductions accumulate lane-pairwise;
// exp2 is bf16-precise; accumulators convert to bfp16ebs8 block vectors, which the
// native 8x8x8 bfp16 mmul multiplies (detail/bfp16.hpp, block_vector.hpp). fp32 products
// are IEEE here (fact M is not modelled), and inv / invsqrt are IEEE (their AIE2P
// precision is undocumented).
#pragma once

#if defined(__AIENGINE__) || defined(__AIE_ARCH__)
#error "kernels_src/host is the host model of aie_api; AIE builds use the real aie_api"
#endif

#include <cmath>
#include <concepts>
#include <cstdio>
#include <cstdlib>

#include "detail/counts.hpp"
#include "detail/mmul.hpp"
#include "detail/scalar.hpp"
#include "detail/vector.hpp"

namespace aie {

namespace detail {
template <typename X>
struct vector_traits : std::false_type {};
template <typename T, unsigned N>
struct vector_traits<vector<T, N>> : std::true_type {
  using element = T;
  static constexpr unsigned lanes = N;
};
template <typename X>
concept Vector = vector_traits<X>::value;

// The operands of a lane-wise operation: two vectors of one type, or a vector and a
// scalar of (convertible to) its element type, either way round.
template <typename A, typename B>
concept LanewisePair = (Vector<A> && std::same_as<A, B>) ||
                       (Vector<A> && !Vector<B> &&
                        std::convertible_to<B, typename vector_traits<A>::element>) ||
                       (Vector<B> && !Vector<A> &&
                        std::convertible_to<A, typename vector_traits<B>::element>);

template <typename A, typename B>
using pair_vector = std::conditional_t<Vector<A>, A, B>;

// Lane i of an operand as fp32; a scalar is first converted to the vector's element type.
template <typename V, typename X>
float lane(const X &x, unsigned i) {
  if constexpr (Vector<X>)
    return float(x[i]);
  else
    return float(typename vector_traits<V>::element(x));
}

template <typename V, typename A, typename B, typename Op>
V lanewise(const A &a, const B &b, Op op) {
  V out;
  for (unsigned i = 0; i < V::size(); ++i)
    out[i] = typename V::value_type(op(lane<V>(a, i), lane<V>(b, i)));
  return out;
}

// acc + sign * a * b per lane, or only the products (no accumulator input: a product of
// -0 stays -0).
template <unsigned N, typename V, typename A, typename B>
accum<accfloat, N> multiply(const accum<accfloat, N> *acc, const A &a, const B &b, float sign) {
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i) {
    const float product = lane<V>(a, i) * lane<V>(b, i);
    out.host_lane(i) = acc ? acc->host_lane(i) + sign * product : product;
  }
  return out;
}

template <typename T>
inline constexpr bool is_accum_tag = std::is_same_v<T, accfloat>;

template <typename T, unsigned N>
constexpr unsigned bits_of() {
  return N * element_bits<T>;
}

// A lane-wise float operation as aie2/add.hpp forms it: "There are no adders for
// bfloat16, but we can use the accumulator adders for float": both operands up-shifted
// to accumulators, one accumulator add, the sum shifted back; a scalar operand is
// broadcast first.
template <typename A, typename B>
void count_accumulator_add() {
  using V = pair_vector<A, B>;
  const std::uint64_t ops = count::fp32_ops(V::size());
  count::add(count::convert, 3 * ops);
  count::add(count::alu, ops);
  if constexpr (!(Vector<A> && Vector<B>)) count::add(count::move);
}

// Multiplies of N lanes: mul_elem_16 per 16 fp32 lanes (the compiler's fp32 emulation,
// aie2p/mul_acc32_fp.hpp under __AIE_API_FP32_EMULATION__, counted as one issue ⚠),
// mul_elem_32 per 32 bf16 lanes; a scalar operand is broadcast first.
template <typename A, typename B>
std::uint64_t count_multiplies(bool dependent) {
  using V = pair_vector<A, B>;
  using T = typename vector_traits<V>::element;
  const std::uint64_t ops = std::is_same_v<T, float> ? count::fp32_ops(V::size())
                                                     : count::units(bits_of<T, V::size()>(), 512);
  count::add(count::mac, ops);
  if (dependent) count::add(count::mac_dependent, ops);
  if constexpr (!(Vector<A> && Vector<B>)) count::add(count::move);
  return ops;
}

[[noreturn]] inline void fail(const char *what) {
  std::fprintf(stderr, "host aie_api: %s\n", what);
  std::abort();
}
}  // namespace detail

// -- initialization, memory, reshaping ------------------------------------------------
// zeros and broadcast: one register move per 512 bits.
template <typename T, unsigned N>
auto zeros() {
  if constexpr (detail::is_accum_tag<T>) {
    accum<T, N> acc;
    for (unsigned i = 0; i < N; ++i) acc.host_lane(i) = 0.0f;
    detail::count::add(detail::count::move, detail::count::fp32_ops(N));
    return acc;
  } else {
    detail::count::add(detail::count::move, detail::count::units(detail::bits_of<T, N>(), 512));
    vector<T, N> v;
    for (unsigned i = 0; i < N; ++i) v[i] = T(0.0f);
    return v;
  }
}

template <typename T, unsigned N>
vector<T, N> broadcast(T value) {
  detail::count::add(detail::count::move, detail::count::units(detail::bits_of<T, N>(), 512));
  vector<T, N> v;
  for (unsigned i = 0; i < N; ++i) v[i] = value;
  return v;
}

template <unsigned N, typename T>
vector<std::remove_const_t<T>, N> load_v(T *p) {
  detail::count::access(false, detail::bits_of<std::remove_const_t<T>, N>());
  vector<std::remove_const_t<T>, N> v;
  if constexpr (detail::is_nibble<std::remove_const_t<T>>) {
    // Two lanes per byte, lane 2i in the low nibble; int4 lanes are sign-extended.
    const auto *bytes = reinterpret_cast<const std::uint8_t *>(p);
    for (unsigned i = 0; i < N; ++i) {
      const int nibble = (bytes[i / 2] >> (4 * (i % 2))) & 15;
      v[i] = std::is_same_v<std::remove_const_t<T>, int4> && nibble >= 8 ? nibble - 16 : nibble;
    }
  } else {
    for (unsigned i = 0; i < N; ++i) v[i] = p[i];
  }
  return v;
}

// int4 / uint4 lanes widened to int8 / uint8: one unpack per 512 bits of the result
// (aie_api aie2/vector.hpp unpack_sign, the VUNPACK of each native part).
template <unsigned N>
vector<int8, N> unpack(const vector<int4, N> &v) {
  detail::count::add(detail::count::alu, detail::count::units(detail::bits_of<int8, N>(), 512));
  vector<int8, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = int8(int(v[i]));
  return out;
}

template <unsigned N>
vector<uint8, N> unpack(const vector<uint4, N> &v) {
  detail::count::add(detail::count::alu, detail::count::units(detail::bits_of<uint8, N>(), 512));
  vector<uint8, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = uint8(int(v[i]));
  return out;
}

// Integer lanes to bf16, v * 2^-shift (exact for 8-bit lanes). Counted as aie_api
// aie2p/elementary.hpp Fix2Float expands it for lanes of at most 16 bits: the lanes
// up-shifted into an acc32 accumulator, a broadcast magic constant added (acc32 add),
// the same constant subtracted as accfloat, the result shifted back to bf16.
template <typename TR, typename T, unsigned N>
  requires(std::same_as<TR, bfloat16> && (std::same_as<T, int8> || std::same_as<T, uint8>))
vector<TR, N> to_float(const vector<T, N> &v, int shift = 0) {
  const std::uint64_t ops = detail::count::fp32_ops(N);
  detail::count::add(detail::count::convert, 2 * ops);
  detail::count::add(detail::count::alu, 2 * ops);
  detail::count::add(detail::count::move);
  vector<TR, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = TR(std::ldexp(float(v[i]), -shift));
  return out;
}

template <typename T, unsigned N>
T *store_v(T *p, const vector<T, N> &v) {
  detail::count::access(true, detail::bits_of<T, N>());
  for (unsigned i = 0; i < N; ++i) p[i] = v[i];
  return p;
}

template <typename T, unsigned N, typename... Rest>
  requires(std::same_as<vector<T, N>, Rest> && ...)
vector<T, N *(1 + sizeof...(Rest))> concat(const vector<T, N> &first, const Rest &...rest) {
  vector<T, N *(1 + sizeof...(Rest))> out;
  unsigned index = 0;
  out.insert(index++, first);
  (out.insert(index++, rest), ...);
  return out;
}

// `v` read as a row-major rows x cols matrix, returned as its transpose (cols x rows).
template <typename T, unsigned N>
vector<T, N> transpose(const vector<T, N> &v, unsigned rows, unsigned cols) {
  if (rows * cols != N) detail::fail("transpose: rows * cols must equal the vector length");
  // One ::shuffle per 512 bits (aie2/transpose.hpp, the branch AIE2P takes: a 64-lane
  // 16-bit transpose is two shuffles, 32 lanes or fewer one).
  detail::count::add(detail::count::alu, detail::count::units(detail::bits_of<T, N>(), 512));
  vector<T, N> out;
  for (unsigned r = 0; r < rows; ++r)
    for (unsigned c = 0; c < cols; ++c) out[c * rows + r] = v[r * cols + c];
  return out;
}

// Lane i of the result is `a` where bit i of the mask is clear, v[i] where it is set.
template <typename E, typename T, unsigned N>
  requires std::convertible_to<E, T>
vector<T, N> select(E a, const vector<T, N> &v, const mask<N> &m) {
  detail::count::add(detail::count::move);  // the scalar `a`, broadcast
  detail::count::add(detail::count::alu, detail::count::units(detail::bits_of<T, N>(), 512));
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = m.test(i) ? v[i] : T(a);
  return out;
}

// -- lane-wise arithmetic: vectors (of the operands' type) or fp32 accumulators -------
// add / sub / max of bf16 lanes compute in fp32 and round by the current mode.
template <typename A, typename B>
  requires detail::LanewisePair<A, B>
auto add(const A &a, const B &b) {
  detail::count_accumulator_add<A, B>();
  return detail::lanewise<detail::pair_vector<A, B>>(a, b, [](float x, float y) { return x + y; });
}
template <typename A, typename B>
  requires detail::LanewisePair<A, B>
auto sub(const A &a, const B &b) {
  detail::count_accumulator_add<A, B>();
  return detail::lanewise<detail::pair_vector<A, B>>(a, b, [](float x, float y) { return x - y; });
}
template <typename A, typename B>
  requires detail::LanewisePair<A, B>
auto max(const A &a, const B &b) {
  // A native vector max (aie2/max_min.hpp) per 512 bits.
  using V = detail::pair_vector<A, B>;
  using T = typename detail::vector_traits<V>::element;
  detail::count::add(detail::count::alu, detail::count::units(detail::bits_of<T, V::size()>(), 512));
  if constexpr (!(detail::Vector<A> && detail::Vector<B>)) detail::count::add(detail::count::move);
  return detail::lanewise<detail::pair_vector<A, B>>(a, b,
                                                    [](float x, float y) { return x < y ? y : x; });
}

template <typename T, unsigned N>
vector<T, N> neg(const vector<T, N> &v) {
  detail::count::add(detail::count::alu, detail::count::units(detail::bits_of<T, N>(), 512));
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = -v[i];  // a sign flip: exact in both types
  return out;
}

template <unsigned N, typename T>
accum<accfloat, N> add(const accum<accfloat, N> &acc, const vector<T, N> &v) {
  detail::count::add(detail::count::convert, detail::count::fp32_ops(N));  // ups of v
  detail::count::add(detail::count::alu, detail::count::fp32_ops(N));
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i) out.host_lane(i) = acc.host_lane(i) + float(v[i]);
  return out;
}
template <unsigned N, typename T>
accum<accfloat, N> sub(const accum<accfloat, N> &acc, const vector<T, N> &v) {
  detail::count::add(detail::count::convert, detail::count::fp32_ops(N));
  detail::count::add(detail::count::alu, detail::count::fp32_ops(N));
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i) out.host_lane(i) = acc.host_lane(i) - float(v[i]);
  return out;
}

// Products go to an fp32 accumulator; mac / msc add / subtract them lane by lane, each
// product rounded to fp32 first (exact for bf16 x bf16).
template <typename A, typename B>
  requires detail::LanewisePair<A, B>
auto mul(const A &a, const B &b) {
  using V = detail::pair_vector<A, B>;
  detail::count_multiplies<A, B>(false);
  return detail::multiply<V::size(), V>(nullptr, a, b, 1.0f);
}
template <unsigned N, typename A, typename B>
  requires detail::LanewisePair<A, B> && (detail::pair_vector<A, B>::size() == N)
accum<accfloat, N> mac(const accum<accfloat, N> &acc, const A &a, const B &b) {
  detail::count_multiplies<A, B>(true);
  return detail::multiply<N, detail::pair_vector<A, B>>(&acc, a, b, 1.0f);
}
template <unsigned N, typename A, typename B>
  requires detail::LanewisePair<A, B> && (detail::pair_vector<A, B>::size() == N)
accum<accfloat, N> msc(const accum<accfloat, N> &acc, const A &a, const B &b) {
  detail::count_multiplies<A, B>(true);
  return detail::multiply<N, detail::pair_vector<A, B>>(&acc, a, b, -1.0f);
}

// -- reductions ------------------------------------------------------------------------
// The lanes' sum as the hardware forms it (fact S): pairwise halving, lane i + lane
// i + N/2, until one lane is left.
// Counted as aie2/add_reduce.hpp's AIE2P branch (float, fewer than 32 lanes) forms it:
// the vector up-shifted to an accumulator, log2(N) steps of a byte shift and an
// accumulator add, the result shifted back and lane 0 moved to a scalar register.
template <unsigned N>
float reduce_add(const vector<float, N> &v) {
  namespace c = detail::count;
  c::add(c::convert, 2);
  c::add(c::alu, 2 * std::bit_width(N - 1));
  c::add(c::move);
  std::array<float, N> partial;
  for (unsigned i = 0; i < N; ++i) partial[i] = v[i];
  for (unsigned half = N / 2; half > 0; half /= 2)
    for (unsigned i = 0; i < half; ++i) partial[i] = partial[i] + partial[i + half];
  return partial[0];
}

template <typename T, unsigned N>
T reduce_max(const vector<T, N> &v) {
  // log2(N) steps of a shift and a max (as reduce_add), then lane 0 to a scalar.
  detail::count::add(detail::count::alu, 2 * std::bit_width(N - 1));
  detail::count::add(detail::count::move);
  T best = v[0];
  for (unsigned i = 1; i < N; ++i) best = float(v[i]) > float(best) ? v[i] : best;
  return best;
}

// -- elementary functions ----------------------------------------------------------------
// 2^x per lane. On XDNA 2 the result type must be bfloat16 (aie_api requires it); the
// model takes 2^x exactly (fp64, then fp32) and rounds it to bf16 by the current mode,
// as aierun.ops.numerics.exp_bf16 does.
template <typename TR = bfloat16, unsigned N>
  requires std::same_as<TR, bfloat16>
vector<TR, N> exp2(const vector<float, N> &v) {
  // Per 16 lanes (aie2p/elementary.hpp, Exp2): an accumulator from the lanes (ups), one
  // ::exp2, and an insert of its bf16 lanes into the result.
  namespace c = detail::count;
  const std::uint64_t ops = c::fp32_ops(N);
  c::add(c::convert, ops);
  c::add(c::alu, ops);
  if (N > c::FP32_LANES) c::add(c::move, ops);
  vector<TR, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = TR(float(std::exp2(double(v[i]))));
  return out;
}

// The scalar unit's ::inv / ::invsqrt (AIE-ML v2: "Hardware acceleration for inverse,
// square root, and inverse square root", AMD AM027), one issue each (⚠ latency unknown).
inline float inv(float x) {
  detail::count::add(detail::count::scalar);
  return 1.0f / x;
}
inline float invsqrt(float x) {
  detail::count::add(detail::count::scalar);
  return 1.0f / std::sqrt(x);
}

// A float vector has no vector inverse on AIE2P (aie2p/elementary.hpp has one for bfloat16
// only): detail/elementary.hpp's generic loop extracts each lane, calls the scalar
// function and inserts the result.
template <unsigned N>
vector<float, N> inv(const vector<float, N> &v) {
  detail::count::add(detail::count::move, 2 * N);
  vector<float, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = inv(v[i]);
  return out;
}
template <unsigned N>
vector<float, N> invsqrt(const vector<float, N> &v) {
  detail::count::add(detail::count::move, 2 * N);
  vector<float, N> out;
  for (unsigned i = 0; i < N; ++i) out[i] = invsqrt(v[i]);
  return out;
}

}  // namespace aie
