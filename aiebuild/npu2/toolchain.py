"""NPU toolchain discovery and fingerprint: mlir-aie (>= 1.4, with aiecc) and Peano.

Where each part is looked for (docs/hardware.md, "Stack A", "Stack B", "Stack D"):
- aiecc: `$MLIR_AIE_INSTALL_DIR/bin/aiecc`, else `aiecc` on PATH;
- the mlir-aie version: the metadata of the mlir_aie wheel the aiecc that will run
  belongs to (`<site>/mlir_aie-<version>.dist-info` beside `<site>/mlir_aie`, which is
  what `$MLIR_AIE_INSTALL_DIR` names for a wheel install), else, for an aiecc found on
  PATH outside such a directory, the mlir_aie distribution of this Python environment.
  `aiecc --version` is no help: the 1.4 driver prints a banner with a git SHA and no
  version number (aiecc CommandLineOptions.h, printVersion);
- the aie_api headers: `$MLIR_AIE_INSTALL_DIR/include`, else the wheel's `mlir_aie/include`;
- Peano: `$PEANO_INSTALL_DIR` (its version: `clang++ --version`), else the
  `llvm-aie` wheel's data directory (the wheel's version).

The fingerprint (part of every npu2 content key) is the two versions, the git SHA
aiecc reports (a source build or a dev wheel can share a version number) and the
sha256 of the aiecc and clang++ binaries. Hashing a compiler on every no-op
`doit compile` would cost seconds, so hashes and `--version` answers are cached by
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

from packaging.version import InvalidVersion, Version

from aierun import paths
from aierun.files import sha256_file, write_json_atomic

MIN_MLIR_AIE = Version("1.4")
# The wheel's names (utils/mlir_aie_wheels/setup.py): both install the package `mlir_aie`.
MLIR_AIE_DISTRIBUTIONS = ("mlir_aie", "mlir_aie_no_rtti")
MLIR_AIE_PACKAGE = "mlir_aie"
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
    version = _mlir_aie_version(aiecc, install if installed else None)
    problem = _version_problem(version, aiecc)
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
    aiecc = _require(found.aiecc, "aiecc")
    sha = re.search(r"git SHA:\s*(\S+)", probes.version_output(aiecc))
    result = {
        "mlir_aie": found.mlir_aie_version,
        "llvm_aie": found.peano_version,
        "aiecc_git_sha": sha.group(1) if sha else None,
        "aiecc_sha256": probes.sha256(aiecc),
        "clang_sha256": probes.sha256(found.clang),
    }
    probes.save()
    return result


# -- finding the parts ----------------------------------------------------------


def _mlir_aie_version(aiecc: Path, install: Path | None) -> str | None:
    """The version of the mlir_aie wheel that `aiecc` belongs to: the metadata beside
    its install directory; for an aiecc on PATH outside one (the wheel's console
    script), this environment's distribution. An install directory without metadata
    (a source build) has no version we could trust: a wheel in the same environment
    may be another release."""
    root = install or aiecc.resolve().parents[1]
    beside = _distribution_at(root)
    if beside is not None or install is not None:
        return beside.version if beside is not None else None
    for name in MLIR_AIE_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _distribution_at(root: Path) -> importlib.metadata.Distribution | None:
    """The mlir_aie wheel whose package directory `root` is, from its metadata."""
    if root.name != MLIR_AIE_PACKAGE:
        return None
    for dist in importlib.metadata.distributions(path=[str(root.parent)]):
        name = (dist.metadata["Name"] or "").replace("-", "_").lower()
        if name in MLIR_AIE_DISTRIBUTIONS:
            return dist
    return None


def _version_problem(version: str | None, aiecc: Path) -> str | None:
    if version is None:
        root = aiecc.resolve().parents[1]
        return (
            f"cannot tell the mlir-aie version of {aiecc}: no mlir_aie wheel metadata "
            f"(mlir_aie-<version>.dist-info) beside {root}, and `aiecc --version` names only "
            f"a git SHA. Use the mlir_aie wheel (MLIR_AIE_INSTALL_DIR=<site-packages>/mlir_aie) "
            f"rather than a source build. {INSTALL_HINT}"
        )
    try:
        supported = Version(version) >= MIN_MLIR_AIE
    except InvalidVersion:
        supported = False
    if not supported:
        return (
            f"mlir-aie {version} is not supported: this project needs mlir-aie >= "
            f"{MIN_MLIR_AIE} (IRON and aiecc changed spelling in 1.4). {INSTALL_HINT}"
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
        return env, _clang_version(env / "bin" / "clang++")
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


def _clang_version(clang: Path) -> str | None:
    probes = _Probes.load()
    found = re.search(r"\d+\.\d+(?:\.\d+)?[\w.+-]*", probes.version_output(clang))
    probes.save()
    return found.group(0) if found else None


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

    def version_output(self, binary: Path) -> str:
        entry = self._entry(binary)
        if "version_output" not in entry:
            entry["version_output"] = _ask_version(binary)
            self.changed = True
        return entry["version_output"]


def _ask_version(binary: Path) -> str:
    """What `binary --version` prints ("" when it cannot run)."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr
