"""Stand-in `aie.iron.device` (tests only)."""


class NPU2:
    name = "npu2"


class Tile:
    def __init__(self, col=None, row=None):
        self.col, self.row = col, row
