"""NPU toolchain discovery: mlir-aie (>= 1.4, with aiecc) and Peano (llvm-aie)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Toolchain:
    usable: bool
    reason: str  # why not usable, or a one-line summary when it is
    mlir_aie: Path | None = None
    peano: Path | None = None
    aiecc: Path | None = None


def discover() -> Toolchain:
    mlir_aie = _env_dir("MLIR_AIE_INSTALL_DIR")
    aiecc = shutil.which("aiecc") or (mlir_aie and _exe(mlir_aie / "bin" / "aiecc"))
    peano = _env_dir("PEANO_INSTALL_DIR")
    if not aiecc:
        return Toolchain(
            False, "no NPU toolchain found (aiecc from mlir-aie >= 1.4 is not installed)"
        )
    if not peano:
        return Toolchain(
            False, "aiecc found but no Peano: set PEANO_INSTALL_DIR", mlir_aie, None, Path(aiecc)
        )
    return Toolchain(True, f"aiecc {aiecc}, Peano {peano}", mlir_aie, peano, Path(aiecc))


def _env_dir(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value and Path(value).is_dir() else None


def _exe(path: Path) -> str | None:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None
