"""aiebuild: ELF specs -> launch plans / MLIR -> objects -> ELFs -> artifact store, bundles."""
