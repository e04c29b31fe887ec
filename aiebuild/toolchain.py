"""NPU toolchain discovery and fingerprint: mlir-aie (>= 1.4, with aiecc) and Peano.

Where each part is looked for (npu-stack.md):
- aiecc: `$MLIR_AIE_INSTALL_DIR/bin/aiecc`, else `aiecc` on PATH;
- the mlir-aie version: `aiecc --version` of the aiecc that will run when it comes
  from `$MLIR_AIE_INSTALL_DIR`, else the `mlir_aie` Python distribution, else
  `aiecc --version`;
- the aie_api headers: `$MLIR_AIE_INSTALL_DIR/include`, else the wheel's `mlir_aie/include`;
- Peano: `$PEANO_INSTALL_DIR` (its version: `clang++ --version`), else the
  `llvm-aie` wheel's data directory (the wheel's version).

The fingerprint (part of every npu2 content key) is the two versions plus the
sha256 of the aiecc and clang++ binaries. Hashing a compiler on every no-op
`doit compile` would cost seconds, so hashes and version probes are cached by
path, mtime and size in `<runtime home>/toolchain-probes.json`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aierun import paths
from aierun.files import sha256_file, write_json_atomic

MIN_MLIR_AIE = (1, 4)
MLIR_AIE_DISTRIBUTIONS = ("mlir_aie", "mlir-aie")
INSTALL_HINT = (
    "Install mlir-aie >= 1.4 and Peano (`pip install mlir_aie llvm-aie` from the "
    "mlir-aie release wheels, see docs/hardware-bring-up.md) or set MLIR_AIE_INSTALL_DIR "
    "and PEANO_INSTALL_DIR; or build for the emulated device with `doit compile target=emu`."
)


@dataclass(frozen=True)
class Toolchain:
    usable: bool
    reason: str  # why not usable, or a one-line summary when it is
    mlir_aie_version: str | None = None
    aiecc: Path | None = None
    include: Path | None = None  # holds aie_api/aie.hpp
    peano: Path | None = None
    peano_version: str | None = None

    @property
    def clang(self) -> Path:
        return _require(self.peano, "Peano") / "bin" / "clang++"

    @property
    def objcopy(self) -> Path:
        """llvm-objcopy (GNU objcopy cannot handle AIE objects): Peano's, else mlir-aie's."""
        candidates = [_require(self.peano, "Peano") / "bin" / "llvm-objcopy"]
        if self.aiecc is not None:
            candidates.append(self.aiecc.parent / "llvm-objcopy")
        return next((c for c in candidates if c.is_file()), candidates[0])


def discover() -> Toolchain:
    install = _env_dir("MLIR_AIE_INSTALL_DIR")
    installed = install and _exe(install / "bin" / "aiecc")
    aiecc = installed or _which("aiecc")
    if aiecc is None:
        return Toolchain(False, f"no NPU toolchain: aiecc (mlir-aie) was not found. {INSTALL_HINT}")
    version = _mlir_aie_version(aiecc, ask_binary=bool(installed))
    problem = _version_problem(version)
    if problem:
        return Toolchain(False, problem, version, aiecc)
    include = _include_dir(install)
    if include is None:
        return Toolchain(
            False,
            f"mlir-aie {version} found ({aiecc}) but not its aie_api headers "
            f"(include/aie_api/aie.hpp). {INSTALL_HINT}",
            version,
            aiecc,
        )
    if not _iron_importable():
        return Toolchain(
            False,
            f"mlir-aie {version} found but its Python package (aie.iron) is not importable: "
            f"add $MLIR_AIE_INSTALL_DIR/python to PYTHONPATH or install the wheel. {INSTALL_HINT}",
            version,
            aiecc,
            include,
        )
    peano, peano_version = _peano()
    if peano is None:
        return Toolchain(
            False,
            f"mlir-aie {version} found but no Peano (llvm-aie) with bin/clang++. {INSTALL_HINT}",
            version,
            aiecc,
            include,
        )
    summary = f"mlir-aie {version} ({aiecc}), Peano {peano_version} ({peano})"
    return Toolchain(True, summary, version, aiecc, include, peano, peano_version)


def fingerprint(found: Toolchain) -> dict[str, Any]:
    """What identifies the compiler for the content keys: versions and binary hashes."""
    probes = _Probes.load()
    result = {
        "mlir_aie": found.mlir_aie_version,
        "llvm_aie": found.peano_version,
        "aiecc_sha256": probes.sha256(_require(found.aiecc, "aiecc")),
        "clang_sha256": probes.sha256(found.clang),
    }
    probes.save()
    return result


# -- finding the parts ----------------------------------------------------------


def _mlir_aie_version(aiecc: Path, ask_binary: bool) -> str | None:
    """The version of the mlir-aie that `aiecc` belongs to: an install directory's
    aiecc is asked itself (a wheel in the same environment may be another release)."""
    if not ask_binary:
        for name in MLIR_AIE_DISTRIBUTIONS:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
    return _probed_version(aiecc)


def _probed_version(binary: Path) -> str | None:
    probes = _Probes.load()
    version = probes.version(binary)
    probes.save()
    return version


def _version_problem(version: str | None) -> str | None:
    if version is None:
        return f"cannot tell the mlir-aie version (`aiecc --version` said none). {INSTALL_HINT}"
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers is None or (int(numbers[1]), int(numbers[2])) < MIN_MLIR_AIE:
        return (
            f"mlir-aie {version} is not supported: this project needs mlir-aie >= "
            f"{'.'.join(map(str, MIN_MLIR_AIE))} (IRON and aiecc changed spelling in 1.4). "
            f"{INSTALL_HINT}"
        )
    return None


def _include_dir(install: Path | None) -> Path | None:
    candidates = [install / "include"] if install else []
    for name in MLIR_AIE_DISTRIBUTIONS:
        try:
            located = importlib.metadata.distribution(name).locate_file("mlir_aie/include")
            candidates.append(Path(str(located)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return next((c for c in candidates if (c / "aie_api" / "aie.hpp").is_file()), None)


def _iron_importable() -> bool:
    """The IRON designs need `aie.iron`; looked up without importing mlir-aie itself."""
    try:
        return importlib.util.find_spec("aie.iron") is not None
    except ImportError:  # no `aie` package at all
        return False


def _peano() -> tuple[Path | None, str | None]:
    env = _env_dir("PEANO_INSTALL_DIR")
    try:
        wheel_version = importlib.metadata.version("llvm-aie")
        wheel = Path(str(importlib.metadata.distribution("llvm-aie").locate_file("llvm-aie")))
    except importlib.metadata.PackageNotFoundError:
        wheel_version, wheel = None, None
    if env is not None and _exe(env / "bin" / "clang++"):
        return env, _probed_version(env / "bin" / "clang++")
    if wheel is not None and _exe(wheel / "bin" / "clang++"):
        return wheel, wheel_version
    return None, None


def _env_dir(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value and Path(value).is_dir() else None


def _exe(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _which(program: str) -> Path | None:
    found = shutil.which(program)
    return Path(found) if found else None


def _require(path: Path | None, what: str) -> Path:
    if path is None:
        raise ValueError(f"the toolchain has no {what}: check Toolchain.usable first")
    return path


# -- cached probes ----------------------------------------------------------------


class _Probes:
    """sha256 and `--version` answers of toolchain binaries, keyed by path, mtime and
    size: a no-op compile must not rehash a 100 MB compiler."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data, self.changed = path, data, False

    @classmethod
    def load(cls) -> _Probes:
        path = paths.home() / "toolchain-probes.json"
        try:
            return cls(path, json.loads(path.read_text()))
        except (OSError, ValueError):
            return cls(path, {})

    def save(self) -> None:
        if self.changed:
            write_json_atomic(self.path, self.data)

    def _entry(self, binary: Path) -> dict[str, Any]:
        resolved = binary.resolve()
        stat = resolved.stat()
        stamp = [stat.st_mtime_ns, stat.st_size]
        entry = self.data.get(str(resolved))
        if entry is None or entry["stamp"] != stamp:
            entry = self.data[str(resolved)] = {"stamp": stamp}
            self.changed = True
        return entry

    def sha256(self, binary: Path) -> str:
        entry = self._entry(binary)
        if "sha256" not in entry:
            entry["sha256"] = sha256_file(binary.resolve())
            self.changed = True
        return entry["sha256"]

    def version(self, binary: Path) -> str | None:
        entry = self._entry(binary)
        if "version" not in entry:
            entry["version"] = _ask_version(binary)
            self.changed = True
        return entry["version"]


def _ask_version(binary: Path) -> str | None:
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\d+\.\d+(?:\.\d+)?[\w.+-]*", done.stdout + done.stderr)
    return found.group(0) if found else None
