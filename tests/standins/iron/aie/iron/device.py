"""Stand-in `aie.iron.device` (tests only)."""


class NPU2:
    name = "npu2"
