"""Stand-in `aie.iron.controlflow` (tests only): the recorded model's `range_`."""

from aiebuild.iron_model import range_

__all__ = ["range_"]
