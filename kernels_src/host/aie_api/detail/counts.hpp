// Operation counters of the host model: what each aie_api call issues on AIE2P, counted
// as the real aie_api (Xilinx/aie_api dc3ab77, include/aie_api/detail/aie2p/ and the
// aie2/ files AIE2P shares) expands it, per VLIW slot class. The simulator reads them
// through the C entry points in host_runtime.cc (aiebuild/sim/host_kernels.py
// `HostKernel.counts`); aiebuild/array/core_model.py turns them into cycles.
//
// A count is an issue: one instruction in one slot. Loads and stores are counted by
// access width; a wider vector is several 512-bit accesses (XDNA 2 has 128b, 256b and
// 512b accesses, aie_api aie_doc.hpp "vector alignment requirements" table). Plain C++
// in the kernels (scalar float arithmetic, address arithmetic, loop control) is not
// counted here: core_model.py states what it adds instead.
#pragma once

#include <cstdint>

// The classes, in the order the C entry points report them. X(name, what).
#define AIE_HOST_COUNTS(X)                                                              \
  X(load_128, "vector loads of 128 bits")                                               \
  X(load_256, "vector loads of 256 bits")                                               \
  X(load_512, "vector loads of 512 bits (a wider vector is several)")                   \
  X(store_128, "vector stores of 128 bits")                                             \
  X(store_256, "vector stores of 256 bits")                                             \
  X(store_512, "vector stores of 512 bits (a wider vector is several)")                 \
  X(mac, "vector multiplies: mul_elem / mac_elem / mmul instructions")                  \
  X(mac_dependent, "of those, the ones whose accumulator input is the previous MAC's")  \
  X(alu, "vector ALU: shuffles, accumulator adds, max, select, shifts, exp2")           \
  X(move, "register moves: insert / extract of parts, broadcasts, vector <-> scalar")   \
  X(convert, "conversions: vector -> accumulator (ups), back (srs), fp32 -> bfp16")     \
  X(scalar, "scalar unit: ::inv, ::invsqrt, control register writes")

namespace aie::detail::count {
enum slot : unsigned {
#define AIE_HOST_COUNT_ENUM(name, what) name,
  AIE_HOST_COUNTS(AIE_HOST_COUNT_ENUM)
#undef AIE_HOST_COUNT_ENUM
  slots
};

// One set per loaded kernel library (defined in host_runtime.cc, hidden like the
// rounding mode register).
extern std::uint64_t counters[slots] __attribute__((visibility("hidden")));

inline void add(slot s, std::uint64_t n = 1) { counters[s] += n; }

// Multiply-accumulates issued so far (never reset: only equality matters), so that an
// mmul that tracks its accumulator can tell whether its input is the previous MAC's
// result (`mac_dependent`) or an older one that interleaved blocks have long finished.
extern std::uint64_t mac_issues __attribute__((visibility("hidden")));

// One MAC into an accumulator last written by MAC number `last` (0: not by a MAC):
// counted, dependent if that was the previous MAC; `last` becomes this one.
inline void tracked_mac(std::uint64_t &last) {
  add(mac);
  if (last != 0 && last == mac_issues) add(mac_dependent);
  last = ++mac_issues;
}

// Issues of `bits` wide data in units of `unit` bits, at least one.
constexpr std::uint64_t units(unsigned bits, unsigned unit) {
  return bits <= unit ? 1 : (bits + unit - 1) / unit;
}

// A load or store of `bits`: one access of the smallest width that holds it, or
// several 512-bit accesses.
inline void access(bool store, unsigned bits) {
  const unsigned base = store ? store_128 : load_128;
  if (bits <= 128)
    add(slot(base));
  else if (bits <= 256)
    add(slot(base + 1));
  else
    add(slot(base + 2), units(bits, 512));
}

// fp32 lanes per native accumulator register and float vector operation: 16 (512 bits;
// aie2/add.hpp, aie2p/elementary.hpp `native_lanes = 16` for exp2).
inline constexpr unsigned FP32_LANES = 16;
inline std::uint64_t fp32_ops(unsigned lanes) { return units(lanes * 32, FP32_LANES * 32); }
}  // namespace aie::detail::count
