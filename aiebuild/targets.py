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
        """None: the plan is the spec itself, which the key covers whole (the modeled
        npu2 time is the manifest's, so editing the time model rebuilds no emu ELF)."""
        return {}

    def build(self, spec: ElfSpec, key: str, store: Store) -> Path:
        return store.publish(key, plan_meta(spec, {"emu": 1}), {PLAN: plan_bytes(spec)})


def plan_bytes(spec: ElfSpec) -> bytes:
    return canonical_json(spec.to_json()).encode()


def plan_meta(spec: ElfSpec, toolchain: dict[str, Any]) -> dict[str, Any]:
    """artifact.json's record of an ELF (both targets)."""
    return {"name": spec.name, "instance": spec.instance, "toolchain": toolchain}


def entry_key(target: Target, spec: ElfSpec, fingerprint: dict[str, Any]) -> str:
    return content_key(target.name, spec.to_json(), target.sources(spec), fingerprint)
