"""Loading compiled artifacts: a target manifest and the store entries it names.

Layout (docs/design.md sections 7 and 14): `<home>/targets/<target>/manifest.json` maps each ELF
instance of one model shape to a content key; the entry `<store>/<key>/` holds
`artifact.json` (name, key, target, files with sha256 and size) and its files:
`plan.json` (the ELF spec, i.e. the launch plan) and, for npu2, the full ELF.
Every file is checked against its sha256 before use.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from aierun import ARTIFACT_SCHEMA, OLDER_SCHEMA
from aierun.abi import KV_CACHE, ElfSpec
from aierun.errors import UserError
from aierun.files import process_alive, sha256_file, write_json_atomic
from aierun.model import ModelShape

log = structlog.get_logger("aierun.artifacts")

MANIFEST = "manifest.json"
# A store key is a sha256 in hex: anything else in a manifest is refused, so a
# manifest cannot point outside its store ("../..").
KEY_PATTERN = re.compile("[0-9a-f]{64}")
# Beside a target's manifest: one manifest per model compiled before (models/<name>/).
SIDE_BY_SIDE = "models"
ENTRY_META = "artifact.json"
PLAN = "plan.json"


class ArtifactError(UserError):
    pass


# Beside the entries of a build's store: one file per running process naming the
# entries it uses, so a garbage collection running meanwhile keeps them. A store the
# build collects holds its lock file (aiebuild/store.py); an unpacked bundle's does not,
# and nothing collects it.
PINS = ".pins"
STORE_LOCK = ".lock"


def pin_entries(store: Path, keys: list[str]) -> Path | None:
    """Record that this process uses these entries; the pin file, or None for a store
    nothing collects or one that cannot be written (read-only)."""
    if not (store / STORE_LOCK).is_file():
        return None
    pin = store / PINS / f"{os.getpid()}.json"
    try:
        write_json_atomic(pin, sorted(keys))
    except OSError as exc:
        log.debug("artifacts.pin_not_written", store=str(store), reason=str(exc))
        return None
    return pin


def pinned_keys(store: Path) -> set[str]:
    """Every entry a live process has pinned; the pins of dead processes are removed."""
    keys: set[str] = set()
    for pin in (store / PINS).glob("*.json"):
        if not pin.stem.isdigit() or not process_alive(int(pin.stem)):
            pin.unlink(missing_ok=True)
            continue
        try:
            keys |= {k for k in json.loads(pin.read_text()) if isinstance(k, str)}
        except (OSError, ValueError, TypeError):
            continue  # being written: its process pins again on its next run
    return keys


REBUILD = "run `doit compile` in the checkout (or unpack the bundle again) to rebuild it"


def read_json_file(path: Path, what: str, advice: str) -> Any:
    """A JSON document the runtime depends on; a torn or hand-broken one is refused
    with its path and what to do, not with a decoder traceback."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{what} {path} is not valid JSON ({exc}): {advice}.") from None


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
        raise ArtifactError(f"artifact entry {entry} is missing or has no {ENTRY_META}: {REBUILD}")
    meta = read_json_file(meta_file, "artifact record", REBUILD)
    if not isinstance(meta, dict) or meta.get("key") != entry.name:
        raise ArtifactError(f"artifact entry {entry} is not the entry of its key: {REBUILD}")
    try:
        listed = {name: (info["size"], info["sha256"]) for name, info in meta["files"].items()}
    except (KeyError, TypeError, AttributeError):
        raise ArtifactError(f"{meta_file} has no valid file list: {REBUILD}") from None
    for name, (size, digest) in listed.items():
        path = entry / name
        if not path.is_file() or path.stat().st_size != size:
            raise ArtifactError(f"artifact file {path} is missing or has the wrong size: {REBUILD}")
        if sha256_file(path) != digest:
            raise ArtifactError(f"artifact file {path} does not match its sha256: {REBUILD}")
    return meta


def load_entry(entry: Path, instance: str) -> Artifact:
    meta = verify_entry(entry)
    try:
        spec = ElfSpec.from_json(read_json_file(entry / PLAN, "launch plan", REBUILD))
    except ValueError as exc:
        raise ArtifactError(f"{entry / PLAN}: {exc}: {REBUILD}.") from None
    if spec.instance != instance:
        raise ArtifactError(f"{entry / PLAN} is the plan of {spec.instance}, not {instance}: "
                            f"{REBUILD}.")  # fmt: skip
    files = {name: entry / name for name in meta["files"]}
    return Artifact(instance, meta["key"], meta["target"], spec, files, meta)


def _check_sizes(spec: ElfSpec, shape: ModelShape, plan: Path) -> None:
    """Refuse, before anything is allocated from it, a plan whose bucket or buffers are
    larger than its model can need: a bundle must not make the runtime allocate what it
    likes. No argument of one call holds more than a bucket's rows (one for decode) of
    the model's widest row (its vocabulary, padded to whole tiles per partition), no
    weight more than the largest tensor, and the KV cache no more than the context's."""
    if not 0 <= spec.bucket <= shape.max_positions:
        raise ArtifactError(f"{plan}: bucket {spec.bucket} exceeds the model's "
                            f"{shape.max_positions} positions: {REBUILD}.")  # fmt: skip
    widest = max(shape.hidden, shape.ffn, shape.q_dim, shape.kv_dim, shape.vocab + 1024)
    largest_weight = widest * max(shape.hidden, shape.ffn, shape.q_dim)
    for arg in spec.args:
        elements = math.prod(arg.shape)
        limit = largest_weight if arg.source else max(spec.bucket, 1) * widest
        if arg.name == KV_CACHE:  # K and V of the model's whole context, at most
            limit = 2 * shape.kv_dim * shape.max_positions
        if elements > limit:
            raise ArtifactError(
                f"{plan}: argument {arg.name!r} declares {list(arg.shape)} ({elements} "
                f"elements), more than this model can need ({limit}): {REBUILD}."
            )


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
        advice = "run `doit compile` again (it rewrites it), or unpack the bundle again"
        data = read_json_file(manifest_file, "manifest", advice)
        schema = data.get("schema", 0) if isinstance(data, dict) else 0
        if not isinstance(schema, int) or schema > ARTIFACT_SCHEMA:
            raise ArtifactError(
                f"{manifest_file} uses artifact schema {schema}; this runtime reads up to "
                f"{ARTIFACT_SCHEMA}. Upgrade aierun or rebuild the artifacts."
            )
        if schema < ARTIFACT_SCHEMA:
            raise ArtifactError(
                f"{manifest_file} uses artifact schema {schema} ({OLDER_SCHEMA}); this runtime "
                f"reads {ARTIFACT_SCHEMA}: {advice}."
            )
        try:
            return cls(
                manifest_file.parent,
                str(data["target"]),
                ModelShape.from_json(data["model"]),
                tuple(int(b) for b in data["buckets"]),
                {**data, "elfs": dict(data["elfs"]), "store": str(data["store"])},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"manifest {manifest_file} is incomplete or malformed ({exc!r}): {advice}."
            ) from None

    @property
    def store(self) -> Path:
        return (self.root / self.manifest["store"]).resolve()

    @property
    def instances(self) -> list[str]:
        return list(self.manifest["elfs"])

    def pin(self) -> Path | None:
        """Keep this set's entries through a `doit cache gc=1` while this process runs
        (`pin_entries`); the caller removes the pin when done."""
        return pin_entries(self.store, list(self.manifest["elfs"].values()))

    def npu2_model_ms(self, instance: str) -> float | None:
        """One call of the ELF on npu2 as the build modeled it (the manifest's
        `npu2_model`, beside the artifacts); None where the manifest has none for it."""
        model = self.manifest.get("npu2_model")
        entry = model.get(instance) if isinstance(model, dict) else None
        ms = entry.get("ms") if isinstance(entry, dict) else None
        return float(ms) if isinstance(ms, int | float) else None

    def load(self, instance: str) -> Artifact:
        key = self.manifest["elfs"].get(instance)
        if key is None:
            raise ArtifactError(f"the artifacts in {self.root} have no ELF {instance!r}")
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise ArtifactError(
                f"the manifest in {self.root} names {key!r} for {instance}, which is not a "
                f"content key: {REBUILD}"
            )
        artifact = load_entry(self.store / key, instance)
        _check_sizes(artifact.spec, self.shape, self.store / key / PLAN)
        log.debug("artifact.load", elf=instance, key=key[:12], target=artifact.target)
        return artifact

    def for_model(self, shape: ModelShape, model_name: str) -> ArtifactSet:
        """This set if it was compiled for `shape`, else the set kept beside it for that
        model: `doit compile` keeps one manifest per model under `models/`, so going
        back to a model compiled before needs no compile."""
        if shape == self.shape:
            return self
        for other in sorted((self.root / SIDE_BY_SIDE).glob(f"*/{MANIFEST}")):
            try:
                candidate = ArtifactSet.open(other)
            except ArtifactError as exc:
                log.warning("artifacts.side_manifest_unreadable", reason=str(exc))
                continue
            if candidate.shape == shape:
                log.info("artifacts.model_manifest", model=model_name, manifest=str(other))
                return candidate
        return self  # check_model says what to do

    def check_model(self, shape: ModelShape, model_name: str) -> None:
        if shape != self.shape:
            raise ArtifactError(
                f"the artifacts in {self.root} were compiled for another model shape than "
                f"{model_name}: compile for this model (doit compile model=...) or pass the "
                "matching --artifacts."
            )


def find_manifest(where: Path | None, targets: tuple[str, ...], homes: list[Path]) -> Path:
    """The manifest to use: `where` (a manifest file, an unpacked bundle or a build
    directory / runtime home), else the first of `homes` that has one; the first of
    `targets` wins within a place."""
    places = homes if where is None else [where]
    for base in places:
        candidates = [base, base / MANIFEST, *(base / "targets" / t / MANIFEST for t in targets)]
        for candidate in candidates:
            if candidate.is_file() and candidate.name == MANIFEST:
                log.debug("artifacts.found", manifest=str(candidate))
                return candidate
    raise ArtifactError(
        f"no compiled artifacts for target {' or '.join(targets)} in "
        f"{' or '.join(map(str, places))}. Run `doit compile` in the checkout (then run "
        "aierun inside it, or pass --artifacts <checkout>/build), or pass --artifacts with "
        "a bundle made by `doit pack`."
    )
