"""Stand-in `aie.iron.controlflow` (tests only): the recorded model's `range_`."""

from aiebuild.array.iron_record import range_

__all__ = ["range_"]
