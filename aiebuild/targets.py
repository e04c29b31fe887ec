"""Build targets: what an ELF artifact is made of on each target.

- `emu`: the launch plan (the ELF spec as JSON) is the whole artifact.
- `npu2`: the plan plus the full ELF built from IRON designs, Peano objects and
  aiecc (aiebuild.npu2.target).

A target names the source files and toolchain that determine an entry's bytes,
which is what the content key covers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from aiebuild.store import Store, content_key
from aierun.abi import ElfSpec, canonical_json
from aierun.artifacts import PLAN
from aierun.files import sha256_file


class Target(Protocol):
    name: str

    def fingerprint(self) -> dict[str, Any]:
        """Toolchain identity: versions and binary hashes."""

    def sources(self, spec: ElfSpec) -> dict[str, str]:
        """sha256 of every source file that feeds this ELF, by project-relative path."""

    def build(self, spec: ElfSpec, key: str, store: Store) -> Path:
        """Build the entry and publish it under `key`."""


class EmuTarget:
    name = "emu"

    def fingerprint(self) -> dict[str, Any]:
        return {"emu": 1}

    def sources(self, spec: ElfSpec) -> dict[str, str]:
        """The plan is the spec; the modeled npu2 time beside it also follows the
        designs, the kernels and the time model."""
        return npu2_model_sources(spec)

    def build(self, spec: ElfSpec, key: str, store: Store) -> Path:
        return store.publish(key, plan_meta(spec, {"emu": 1}), {PLAN: plan_bytes(spec)})


def plan_bytes(spec: ElfSpec) -> bytes:
    return canonical_json(spec.to_json()).encode()


def plan_meta(spec: ElfSpec, toolchain: dict[str, Any]) -> dict[str, Any]:
    """artifact.json's record of an ELF, with its modeled npu2 time (both targets), which
    the runtime's profile report shows without importing aiebuild."""
    return {
        "name": spec.name,
        "instance": spec.instance,
        "toolchain": toolchain,
        "npu2_model": npu2_model(spec),
    }


def npu2_model(spec: ElfSpec) -> dict[str, Any]:
    """One call of the ELF on npu2 as aiebuild/array/timing.py models it ({"ms", "fixed_ms",
    "launches": [{"label", "ms", "bound"}]}); the plan has checked that the npu2
    designs build it (aiebuild/array/rules.py)."""
    from aiebuild.array import timing  # the designs load only when an ELF is built

    return timing.elf_time(spec).summary()


def npu2_model_sources(spec: ElfSpec) -> dict[str, str]:
    """sha256 of the files the modeled time depends on: the designs and kernels, the
    time model and its kernel costs."""
    from aiebuild import ops

    root = Path(__file__).resolve().parents[1]
    files = {
        **ops.design_sources(spec),
        **{
            f"aiebuild/array/{n}": root / "aiebuild" / "array" / n
            for n in ("timing.py", "kernel_costs.py")
        },
    }
    return {label: sha256_file(path) for label, path in files.items()}


def entry_key(target: Target, spec: ElfSpec, fingerprint: dict[str, Any]) -> str:
    return content_key(target.name, spec.to_json(), target.sources(spec), fingerprint)
