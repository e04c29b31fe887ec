"""Stand-in `aie.iron.device` (tests only): the recorded model's device and tile."""

from aiebuild.array.iron_record import NPU2, Tile

__all__ = ["NPU2", "Tile"]
