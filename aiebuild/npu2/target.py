"""The npu2 target: IRON designs + Peano objects + the stitcher + aiecc -> one full ELF.

Per ELF (docs/design.md section 3):
0. at plan time, the hardware rules check (aiebuild/array/rules.py, for every target)
   refuses a launch its design cannot tile or the NPU cannot hold, before anything compiles;
1. every launch's kernel object comes from the object cache, content-keyed by the
   kernel source (and the local headers), the compile flags with its -D
   parameters and the toolchain fingerprint, so an object shared by several ELFs
   is compiled once;
2. every launch's IRON design gives its MLIR; the stitcher joins them into one
   module with a wrapper `@main` (aiebuild.npu2.stitching);
3. in a fresh work directory holding the stitched .mlir and every object beside
   it (a relative `link_with` resolves against the .mlir's directory), aiecc
   builds `<instance>.elf`; the directory is removed on success and kept (and
   named in the error) on failure;
4. the store entry holds plan.json (so the artifact also runs on emu), the ELF
   and the stitched MLIR; its artifact.json names the objects it linked, which
   is what keeps them through `doit cache gc=1` (`collect_objects`).

Parallel builds (`doit -n 2`, two terminals) share the object cache: compiles
run in private staging directories and publish under a file lock; an object
another process published first is taken as is.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from packaging.version import Version

from aiebuild import ops
from aiebuild.npu2 import toolchain
from aiebuild.npu2.stitching import ChildModule, Stitched, stitch
from aiebuild.ops.common import KernelObject
from aiebuild.store import Store
from aiebuild.targets import plan_bytes, plan_meta
from aierun import abi, paths
from aierun.abi import ElfSpec, canonical_json
from aierun.artifacts import ENTRY_META, PLAN
from aierun.errors import UserError
from aierun.files import (
    holding,
    publish_dir,
    sha256_file,
    sha256_text,
    staging_dir,
    write_json_atomic,
)

log = structlog.get_logger("aiebuild.npu2.target")

ROOT = Path(__file__).resolve().parents[2]
PEANO_FLAGS = (
    "-O2",
    "-std=c++20",
    "--target=aie2p-none-unknown-elf",
    "-DNDEBUG",
    "-D__AIE_API_AIE_ADF_HPP__",  # keeps out a Vitis-only header
    "-Wno-parentheses",
    "-Wno-attributes",
    "-Wno-macro-redefined",
    "-Wno-empty-body",
)
# Several device configurations in one full ELF (docs/hardware.md, "Stack B. aiecc 1.4"), cores
# compiled and linked by Peano: aiecc 1.4.0 defaults to Chess (CommandLineOptions.h at
# v1.4.0: `xchesscc`, `xbridge` cl::init(true)), 1.4.1.dev46 and later to Peano
# (Xilinx/mlir-aie#3501, which also removed `--no-xchesscc`); the explicit `=false`
# form is accepted by both, and both flags are needed (1.4.0 turns both on when either
# is left on).
AIECC_FLAGS = ("--get-full-elf", "--expand-load-pdis", "--xchesscc=false", "--xbridge=false")
# --expand-load-pdis resets the array before each configure by loading one of two
# empty PDIs in turn; the firmware skips a PDI load that repeats the last one, so a
# sequence with an odd number of configures swallows the next dispatch's first reset.
# Xilinx/mlir-aie#3622 (first in the 1.4.3.dev31+gaf819a8 wheel) appends the missing
# reset itself; older releases get it from the stitcher (pad_odd_configures).
RESET_PARITY_FIXED_IN = Version("1.4.3.dev31")
STITCHED = "stitched.mlir"
RECORD = "object.json"  # an object cache entry: the object's sha256 and command
LOCK = ".lock"  # held while an object entry is published or collected


class BuildError(UserError):
    pass


@dataclass(frozen=True)
class ObjectCache:
    """Compiled kernel objects under `<home>/objects/npu2/<key>/`, published atomically
    (compiled in a temporary directory, then renamed under LOCK) and checked by sha256.
    Names starting with a dot are the cache's own: the lock and staging directories."""

    root: Path

    def entry(self, key: str) -> Path:
        return self.root / key

    def path(self, key: str, obj: KernelObject) -> Path | None:
        """The cached object file, or None when it is missing or corrupt."""
        target = self.entry(key) / obj.name
        try:
            record = json.loads((self.entry(key) / RECORD).read_text())
            return target if record["sha256"] == sha256_file(target) else None
        except (OSError, ValueError, KeyError):
            return None

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return holding(self.root / LOCK, "the npu2 kernel object cache")


def object_cache(home: Path) -> ObjectCache:
    return ObjectCache(Path(home) / "objects" / "npu2")


class Npu2Target:
    name = "npu2"

    def __init__(self, home: Path | None = None, found: toolchain.Toolchain | None = None):
        self.home = Path(home) if home is not None else paths.home()
        self._found = found
        self._fingerprint: dict[str, Any] | None = None
        self.objects = object_cache(self.home)

    # -- Target protocol ----------------------------------------------------------
    @property
    def toolchain(self) -> toolchain.Toolchain:
        if self._found is None:
            self._found = toolchain.discover()
        if not self._found.usable:
            raise UserError(f"cannot build for npu2: {self._found.reason}")
        return self._found

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = toolchain.fingerprint(self.toolchain)
        return self._fingerprint

    @property
    def pads_odd_configures(self) -> bool:
        """Whether the stitcher adds the reset this aiecc leaves out (RESET_PARITY_FIXED_IN)."""
        version = self.toolchain.mlir_aie_version
        if version is None:  # discover() calls such a toolchain unusable
            raise ValueError("the toolchain has no mlir-aie version")
        return needs_reset_pad(version)

    def sources(self, spec: ElfSpec) -> dict[str, str]:
        """The designs and kernels (and their -D parameters), the stitcher, the ABI
        (whose kernel name and argument order the stitched @main follows), and the
        flags the compilers run with (not this module's bytes: a log line edited here
        must not rebuild every ELF)."""
        files = {
            **ops.design_sources(spec),
            "aiebuild/npu2/stitching.py": ROOT / "aiebuild" / "npu2" / "stitching.py",
            "aierun/abi.py": Path(abi.__file__),  # the spec, bindings, kernel name, arg order
        }
        hashes = {label: sha256_file(path) for label, path in files.items()}
        flags = {"peano": PEANO_FLAGS, "aiecc": AIECC_FLAGS, "pad": self.pads_odd_configures}
        hashes["aiebuild/npu2/target.py:flags"] = sha256_text(canonical_json(flags))
        # The -D parameters the designs derive (from their constants and the specs').
        objects = [[o.source.name, *o.flags()] for o in self.kernel_objects(spec)]
        hashes["kernel objects"] = sha256_text(canonical_json(objects))
        return hashes

    def build(self, spec: ElfSpec, key: str, store: Store) -> Path:
        if store.is_valid(key):  # another process built it meanwhile
            return store.entry(key)
        objects = {o.name: o for o in self.kernel_objects(spec)}
        work = self._fresh_work_dir(spec, key)
        stitched = self.stitch(spec, work)
        linked = self._place_objects(stitched, objects, work)
        elf = f"{spec.instance}.elf"
        self._run(
            [str(self.toolchain.aiecc), *AIECC_FLAGS, f"--full-elf-name={elf}",
             f"--peano={self.toolchain.peano}", STITCHED],
            work, f"aiecc for {spec.instance}",
        )  # fmt: skip
        if not (work / elf).is_file():
            raise BuildError(f"aiecc reported success but wrote no {elf} in {work}")
        meta = {
            **plan_meta(spec, self.fingerprint()),
            "kernel": f"main:{stitched.sequence}",
            "elf": elf,
            "arg_order": [arg.name for arg in spec.kernel_arg_order],
            "objects": linked,
        }
        files = {PLAN: plan_bytes(spec), elf: work / elf, STITCHED: work / STITCHED}
        entry = store.publish(key, meta, files)
        shutil.rmtree(work, ignore_errors=True)  # kept only when something failed
        return entry

    # -- objects ------------------------------------------------------------------
    def kernel_objects(self, spec: ElfSpec) -> list[KernelObject]:
        return ops.kernel_objects(spec)

    def object_key(self, obj: KernelObject) -> str:
        headers = sorted(obj.source.parent.glob("*.h"))
        payload = {
            "source": sha256_file(obj.source),
            "headers": {h.name: sha256_file(h) for h in headers},
            "flags": [*PEANO_FLAGS, *obj.flags()],
            "toolchain": self.fingerprint(),
        }
        return sha256_text(canonical_json(payload))

    def object_is_valid(self, obj: KernelObject) -> bool:
        return self.objects.path(self.object_key(obj), obj) is not None

    def build_object(self, obj: KernelObject) -> Path:
        """The cached object for `obj`, compiled with Peano when missing."""
        key = self.object_key(obj)
        cached = self.objects.path(key, obj)
        if cached is not None:
            return cached
        entry = self.objects.entry(key)
        with staging_dir(entry) as staging:
            found = self.toolchain
            command = [
                str(found.clang), *PEANO_FLAGS, f"-I{found.include}", *obj.flags(),
                "-c", str(obj.source), "-o", obj.name,
            ]  # fmt: skip
            log.info("compile.object", object=obj.name, key=key[:12])
            what = f"Peano for {obj.source.name} {' '.join(obj.flags())}"
            self._run(command, staging, what, keeps_cwd=False)
            record = {"object": obj.name, "sha256": sha256_file(staging / obj.name)}
            write_json_atomic(staging / RECORD, {**record, "command": command})
            with self.objects.lock():  # an object another process published first stays
                publish_dir(staging, entry, lambda _: self.objects.path(key, obj) is not None)
        return entry / obj.name

    # -- MLIR ---------------------------------------------------------------------
    def stitch(self, spec: ElfSpec, work: Path) -> Stitched:
        children = []
        for number, launch in enumerate(spec.launches):
            device = f"l{number}_{launch.op}"
            text = ops.mlir(spec, launch)
            (work / f"{device}.mlir").write_text(text)  # kept for inspection on failure
            children.append(ChildModule(device, text, (*launch.inputs, *launch.outputs)))
        # The ABI's kernel name and argument order (aierun/abi.py).
        stitched = stitch(
            children, spec.kernel_arg_order, spec.sequence_name, self.pads_odd_configures
        )
        if stitched.removed_load_pdis:
            log.debug(
                "stitch.load_pdi_removed", elf=spec.instance, count=stitched.removed_load_pdis
            )
        (work / STITCHED).write_text(stitched.mlir)
        return stitched

    def _place_objects(
        self, stitched: Stitched, objects: dict[str, KernelObject], work: Path
    ) -> dict[str, str]:
        """Every linked object beside the stitched MLIR (renamed copies via llvm-objcopy);
        returns the object cache key of each object the ELF links."""
        renamed = {r.object: r for r in stitched.renames}
        linked = {}
        for name in stitched.objects:
            source = renamed[name].source if name in renamed else name
            if source not in objects:
                raise BuildError(f"the stitched MLIR links {source}, which no launch's kernel is")
            cached = self.build_object(objects[source])
            linked[source] = self.object_key(objects[source])
            if name not in renamed:
                shutil.copyfile(cached, work / name)
                continue
            pairs = [f"--redefine-sym={old}={new}" for old, new in renamed[name].symbols]
            command = [str(self.toolchain.objcopy), *pairs, str(cached), name]
            self._run(command, work, f"llvm-objcopy for {name}")
        return linked

    def _fresh_work_dir(self, spec: ElfSpec, key: str) -> Path:
        """A private directory per build (two processes may build the same ELF)."""
        parent = self.home / "work" / "npu2"
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{spec.instance}-{key[:12]}.", dir=parent))

    @staticmethod
    def _run(command: list[str], cwd: Path, what: str, keeps_cwd: bool = True) -> None:
        """Run a toolchain program; a failure names it and says where it ran (a work
        directory is kept for inspection, a staging directory is not)."""
        try:
            done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        except OSError as exc:  # a missing or non-executable binary
            raise BuildError(
                f"{what} could not start {command[0]}: {exc.strerror or exc}. Check the "
                f"toolchain install ({toolchain.INSTALL_HINT})"
            ) from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
            raise BuildError(
                f"{what} failed (exit {done.returncode}) in {cwd}"
                f"{' (kept for inspection)' if keeps_cwd else ''}:\n"
                f"  {' '.join(command)}\n{tail}\nFix the error above and run `doit compile` "
                "again; nothing was published to the artifact store."
            )


def needs_reset_pad(mlir_aie_version: str) -> bool:
    return Version(mlir_aie_version) < RESET_PARITY_FIXED_IN


def collect_objects(home: Path, kept_entries: Iterable[Path], grace_s: float = 0.0) -> list[str]:
    """Remove the cached objects that no kept npu2 store entry links (their
    artifact.json names them), and staging debris, except what is younger than
    `grace_s` (a running build may be compiling or about to link it); returns the
    removed names. Objects are rebuilt on demand: this only costs a later recompile."""
    cache = object_cache(home)
    if not cache.root.is_dir():
        return []
    keep = set()
    for entry in kept_entries:
        try:
            keep |= set(json.loads((entry / ENTRY_META).read_text()).get("objects", {}).values())
        except (OSError, ValueError, AttributeError):
            continue  # an unreadable entry is rebuilt anyway, with its objects
    removed, now = [], time.time()
    with cache.lock():
        for path in sorted(cache.root.iterdir()):
            young = now - path.stat().st_mtime < grace_s
            if path.name != LOCK and path.name not in keep and not young:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    log.info("objects.gc", removed=len(removed), kept=len(keep))
    return removed
