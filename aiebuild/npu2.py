"""The npu2 target: IRON designs + Peano objects + the stitcher + aiecc -> one full ELF.

Per ELF (DESIGN.md section 3):
1. every launch's kernel object comes from the object cache, content-keyed by the
   kernel source (and the local headers), the compile flags with its -D
   parameters and the toolchain fingerprint, so an object shared by several ELFs
   is compiled once;
2. every launch's IRON design gives its MLIR; the stitcher joins them into one
   module with a wrapper `@main` (aiebuild.stitching);
3. in a fresh work directory holding the stitched .mlir and every object beside
   it (a relative `link_with` resolves against the .mlir's directory), aiecc
   builds `<instance>.elf`;
4. the store entry holds plan.json (so the artifact also runs on emu), the ELF
   and the stitched MLIR.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from aiebuild import designs, toolchain
from aiebuild.designs.common import KernelObject
from aiebuild.stitching import ChildModule, Stitched, stitch
from aiebuild.store import Store
from aiebuild.targets import plan_bytes, plan_meta
from aierun import paths
from aierun.abi import ElfSpec, canonical_json
from aierun.artifacts import PLAN
from aierun.devices.npu import kernel_arg_order, sequence_name
from aierun.errors import UserError
from aierun.files import sha256_file, write_json_atomic

log = structlog.get_logger("aiebuild.npu2")

ROOT = Path(__file__).resolve().parents[1]
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
# Several device configurations in one full ELF (npu-stack.md, aiecc 1.4).
AIECC_FLAGS = ("--get-full-elf", "--expand-load-pdis")
STITCHED = "stitched.mlir"
RECORD = "object.json"  # an object cache entry: the object's sha256 and command


class BuildError(UserError):
    pass


@dataclass(frozen=True)
class ObjectCache:
    """Compiled kernel objects under `<home>/objects/npu2/<key>/`, published atomically
    (compiled in a temporary directory, then renamed) and checked by sha256."""

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


class Npu2Target:
    name = "npu2"

    def __init__(self, home: Path | None = None, found: toolchain.Toolchain | None = None):
        self.home = Path(home) if home is not None else paths.home()
        self._found = found
        self._fingerprint: dict[str, Any] | None = None
        self.objects = ObjectCache(self.home / "objects" / "npu2")

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

    def sources(self, spec: ElfSpec) -> dict[str, str]:
        files = {
            **designs.design_sources(spec),
            "aiebuild/stitching.py": ROOT / "aiebuild" / "stitching.py",
            "aiebuild/npu2.py": Path(__file__),
        }
        return {label: sha256_file(path) for label, path in files.items()}

    def build(self, spec: ElfSpec, key: str, store: Store) -> Path:
        objects = {o.name: o for o in self.kernel_objects(spec)}
        work = self._fresh_work_dir(spec, key)
        stitched = self.stitch(spec, work)
        self._place_objects(stitched, objects, work)
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
            "arg_order": [arg.name for arg in kernel_arg_order(spec)],
        }
        files = {PLAN: plan_bytes(spec), elf: work / elf, STITCHED: work / STITCHED}
        return store.publish(key, meta, files)

    # -- objects ------------------------------------------------------------------
    def kernel_objects(self, spec: ElfSpec) -> list[KernelObject]:
        return sorted({designs.kernel_object(spec, launch) for launch in spec.launches}, key=str)

    def object_key(self, obj: KernelObject) -> str:
        headers = sorted(obj.source.parent.glob("*.h"))
        payload = {
            "source": sha256_file(obj.source),
            "headers": {h.name: sha256_file(h) for h in headers},
            "flags": [*PEANO_FLAGS, *obj.flags()],
            "toolchain": self.fingerprint(),
        }
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

    def object_is_valid(self, obj: KernelObject) -> bool:
        return self.objects.path(self.object_key(obj), obj) is not None

    def build_object(self, obj: KernelObject) -> Path:
        """The cached object for `obj`, compiled with Peano when missing."""
        key = self.object_key(obj)
        cached = self.objects.path(key, obj)
        if cached is not None:
            return cached
        self.objects.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.objects.root))
        try:
            found = self.toolchain
            depfile = staging / f"{Path(obj.name).stem}.d"
            command = [
                str(found.clang), *PEANO_FLAGS, f"-I{found.include}", *obj.flags(),
                "-MD", "-MF", str(depfile), "-c", str(obj.source), "-o", obj.name,
            ]  # fmt: skip
            log.info("compile.object", object=obj.name, key=key[:12])
            self._run(command, staging, f"Peano for {obj.source.name} {' '.join(obj.flags())}")
            record = {"object": obj.name, "sha256": sha256_file(staging / obj.name)}
            write_json_atomic(staging / RECORD, {**record, "command": command})
            entry = self.objects.entry(key)
            shutil.rmtree(entry, ignore_errors=True)  # only a corrupt entry gets here
            staging.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.objects.entry(key) / obj.name

    # -- MLIR ---------------------------------------------------------------------
    def stitch(self, spec: ElfSpec, work: Path) -> Stitched:
        children = []
        for number, launch in enumerate(spec.launches):
            device = f"l{number}_{launch.op}"
            text = designs.op_design(launch.op).design(launch, designs.launch_args(spec, launch))
            (work / f"{device}.mlir").write_text(text)  # kept for inspection
            children.append(ChildModule(device, text, (*launch.inputs, *launch.outputs)))
        # The runtime's rule for the kernel name and argument order (aierun.devices.npu).
        stitched = stitch(
            children, kernel_arg_order(spec), sequence_name(spec), pad_odd_configures=True
        )
        (work / STITCHED).write_text(stitched.mlir)
        return stitched

    def _place_objects(
        self, stitched: Stitched, objects: dict[str, KernelObject], work: Path
    ) -> None:
        """Every linked object beside the stitched MLIR; renamed copies via llvm-objcopy."""
        renamed = {r.object: r for r in stitched.renames}
        for name in stitched.objects:
            source = renamed[name].source if name in renamed else name
            if source not in objects:
                raise BuildError(f"the stitched MLIR links {source}, which no launch's kernel is")
            cached = self.build_object(objects[source])
            if name not in renamed:
                shutil.copyfile(cached, work / name)
                continue
            pairs = [f"--redefine-sym={old}={new}" for old, new in renamed[name].symbols]
            command = [str(self.toolchain.objcopy), *pairs, str(cached), name]
            self._run(command, work, f"llvm-objcopy for {name}")

    def _fresh_work_dir(self, spec: ElfSpec, key: str) -> Path:
        work = self.home / "work" / "npu2" / f"{spec.instance}-{key[:12]}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return work

    @staticmethod
    def _run(command: list[str], cwd: Path, what: str) -> None:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
            raise BuildError(
                f"{what} failed (exit {done.returncode}) in {cwd}:\n  {' '.join(command)}\n"
                f"{tail}\nFix the error above and run `doit compile` again; nothing was "
                "published to the artifact store."
            )
