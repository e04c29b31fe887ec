// The host model's per-library state: the core's rounding mode register, and C entry
// points through which the simulator (aiebuild/sim/host_kernels.py) resets it when a
// core starts and saves / restores it for cores that share one kernel library.
#include "aie_api/detail/scalar.hpp"

namespace aie::detail {
rounding_mode tile_rounding = rounding_mode::floor;
}

extern "C" {
void aie_host_reset_tile() { aie::set_rounding(aie::rounding_mode::floor); }
unsigned aie_host_get_rounding() { return static_cast<unsigned>(aie::get_rounding()); }
void aie_host_set_rounding(unsigned mode) {
  aie::set_rounding(static_cast<aie::rounding_mode>(mode));
}
}
