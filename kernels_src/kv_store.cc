// The prefill's K and V widened to fp32 for the KV cache (aierun/ops/kv_store.py):
//   widen_<CHUNK>(in, out):  out = in, bf16 -> fp32 (exact: bf16 is fp32's upper half)
// -D AIEK_CHUNK=<elements per call>
// The design's output access pattern moves each row's heads to their place in the
// cache; the host's decode attention then multiplies fp32 without converting.
#include "aie_kernel_common.h"

static constexpr int LANES = 16;
static_assert(AIEK_CHUNK % LANES == 0, "AIEK_CHUNK must be a multiple of 16");

extern "C" void AIEK_CAT(widen_, AIEK_CHUNK)(const bfloat16 *in, float *out) {
  for (int i = 0; i < AIEK_CHUNK; i += LANES)
    store_as<LANES>(out + i, load_f32<LANES>(in + i));
}
