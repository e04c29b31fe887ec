"""Stand-in `aie.helpers.taplib` (tests only): the recorded model's access pattern."""

from aiebuild.array.iron_record import TensorAccessPattern

__all__ = ["TensorAccessPattern"]
