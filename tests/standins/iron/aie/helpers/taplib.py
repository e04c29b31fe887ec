"""Stand-in `aie.helpers.taplib` (tests only): the recorded model's access pattern."""

from aiebuild.iron_model import TensorAccessPattern

__all__ = ["TensorAccessPattern"]
