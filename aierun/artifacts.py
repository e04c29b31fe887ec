"""Loading compiled artifacts: a target manifest and the store entries it names.

Layout (DESIGN.md section 7): `<home>/targets/<target>/manifest.json` maps each ELF
instance of one model shape to a content key; the entry `<store>/<key>/` holds
`artifact.json` (name, key, target, files with sha256 and size) and its files:
`plan.json` (the ELF spec, i.e. the launch plan) and, for npu2, the full ELF.
Every file is checked against its sha256 before use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from aierun import ARTIFACT_SCHEMA
from aierun.abi import ElfSpec
from aierun.errors import UserError
from aierun.files import sha256_file
from aierun.model import ModelShape

log = structlog.get_logger("aierun.artifacts")

MANIFEST = "manifest.json"
ENTRY_META = "artifact.json"
PLAN = "plan.json"


class ArtifactError(UserError):
    pass


@dataclass(frozen=True)
class Artifact:
    instance: str
    key: str
    target: str
    spec: ElfSpec
    files: dict[str, Path]
    meta: dict[str, Any]


def verify_entry(entry: Path) -> dict[str, Any]:
    """Read an entry's artifact.json and check every listed file's size and sha256."""
    meta_file = entry / ENTRY_META
    if not meta_file.is_file():
        raise ArtifactError(f"artifact entry {entry} has no {ENTRY_META}")
    meta = json.loads(meta_file.read_text())
    if meta.get("key") != entry.name:
        raise ArtifactError(f"artifact entry {entry} claims key {meta.get('key')!r}")
    for name, info in meta["files"].items():
        path = entry / name
        if not path.is_file() or path.stat().st_size != info["size"]:
            raise ArtifactError(f"artifact file {path} is missing or has the wrong size")
        if sha256_file(path) != info["sha256"]:
            raise ArtifactError(f"artifact file {path} does not match its sha256: it is corrupt")
    return meta


def load_entry(entry: Path, instance: str) -> Artifact:
    meta = verify_entry(entry)
    spec = ElfSpec.from_json(json.loads((entry / PLAN).read_text()))
    files = {name: entry / name for name in meta["files"]}
    return Artifact(instance, meta["key"], meta["target"], spec, files, meta)


@dataclass(frozen=True)
class ArtifactSet:
    """The ELFs compiled for one model shape and target."""

    root: Path
    target: str
    shape: ModelShape
    buckets: tuple[int, ...]
    manifest: dict[str, Any]

    @classmethod
    def open(cls, manifest_file: Path) -> ArtifactSet:
        data = json.loads(manifest_file.read_text())
        schema = data.get("schema", 0)
        if schema > ARTIFACT_SCHEMA:
            raise ArtifactError(
                f"{manifest_file} uses artifact schema {schema}; this runtime reads up to "
                f"{ARTIFACT_SCHEMA}. Upgrade aierun or rebuild the artifacts."
            )
        return cls(
            manifest_file.parent,
            data["target"],
            ModelShape.from_json(data["model"]),
            tuple(data["buckets"]),
            data,
        )

    @property
    def store(self) -> Path:
        return (self.root / self.manifest["store"]).resolve()

    @property
    def instances(self) -> list[str]:
        return list(self.manifest["elfs"])

    def load(self, instance: str) -> Artifact:
        key = self.manifest["elfs"].get(instance)
        if key is None:
            raise ArtifactError(f"the artifacts in {self.root} have no ELF {instance!r}")
        artifact = load_entry(self.store / key, instance)
        log.debug("artifact.load", elf=instance, key=key[:12], target=artifact.target)
        return artifact

    def check_model(self, shape: ModelShape, model_name: str) -> None:
        if shape != self.shape:
            raise ArtifactError(
                f"the artifacts in {self.root} were compiled for another model shape than "
                f"{model_name}: compile for this model (doit compile model=...) or pass the "
                "matching --artifacts."
            )


def find_manifest(where: Path | None, targets: tuple[str, ...], home: Path) -> Path:
    """The manifest to use: `where` (a manifest file, an unpacked bundle or a build
    directory / runtime home), else the runtime home; the first of `targets` wins."""
    base = home if where is None else where
    candidates = [base, base / MANIFEST, *(base / "targets" / t / MANIFEST for t in targets)]
    for candidate in candidates:
        if candidate.is_file() and candidate.name == MANIFEST:
            return candidate
    raise ArtifactError(
        f"no compiled artifacts for target {' or '.join(targets)} in {base}. Run "
        "`doit compile` in the checkout and pass --artifacts <checkout>/build (or set "
        "AIERUN_HOME to it), or pass --artifacts with a bundle made by `doit pack`."
    )
