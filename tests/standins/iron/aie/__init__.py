"""Stand-in for mlir-aie's Python package (tests only): just enough of `aie.iron`
(1.4 spelling) for aiebuild/designs to run and print IRON-shaped MLIR."""
