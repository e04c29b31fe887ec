// The host model's per-library state: the core's rounding mode register and the
// operation counters, and C entry points through which the simulator
// (aiebuild/sim/host_kernels.py) resets the register when a core starts, saves /
// restores it for cores that share one kernel library, and reads what a call issued.
#include <cstring>

#include "aie_api/detail/counts.hpp"
#include "aie_api/detail/scalar.hpp"

namespace aie::detail {
rounding_mode tile_rounding = rounding_mode::floor;
std::uint64_t count::counters[count::slots] = {};
std::uint64_t count::mac_issues = 0;
}  // namespace aie::detail

namespace {
const char *const count_names[] = {
#define AIE_HOST_COUNT_NAME(name, what) #name,
    AIE_HOST_COUNTS(AIE_HOST_COUNT_NAME)
#undef AIE_HOST_COUNT_NAME
};
}  // namespace

extern "C" {
void aie_host_reset_tile() { aie::set_rounding(aie::rounding_mode::floor); }
unsigned aie_host_get_rounding() { return static_cast<unsigned>(aie::get_rounding()); }
void aie_host_set_rounding(unsigned mode) {
  aie::set_rounding(static_cast<aie::rounding_mode>(mode));
}

unsigned aie_host_count_slots() { return aie::detail::count::slots; }
const char *aie_host_count_name(unsigned slot) {
  return slot < aie::detail::count::slots ? count_names[slot] : nullptr;
}
void aie_host_counts_reset() {
  std::memset(aie::detail::count::counters, 0, sizeof aie::detail::count::counters);
}
void aie_host_counts_read(std::uint64_t *out) {
  std::memcpy(out, aie::detail::count::counters, sizeof aie::detail::count::counters);
}
}
