"""Stand-in for mlir-aie's Python package (tests only): `aie.iron` (1.4 spelling) as the
project's recorded model of IRON plus a printer of IRON 1.4's MLIR (aie/iron/printer.py)."""
