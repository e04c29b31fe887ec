"""`doit push ref=HOST/REPO:TAG`: publish the bundle `doit pack` made as an OCI artifact.

The layout (media types, annotations) is the one aierun.registry pulls: the bundle
archive as a layer (its digest is the bundle's sha256), its OpenSSH signature as a
second layer when `doit pack sign=KEY` made one, bundle.json as the config, and the
manifest annotated with model, target, schema and toolchain. The client is the ORAS
Python SDK (oras-py), with the Docker config's credentials.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import structlog

from aiebuild.bundle import bundle_path
from aiebuild.oci import oras_push
from aiebuild.tasks import BuildConfig, select_target
from aierun import signatures
from aierun.abi import canonical_json
from aierun.artifacts import ENTRY_META
from aierun.bundle import BUNDLE_META, ENTRIES
from aierun.errors import UserError
from aierun.registry import (
    ANNOTATION_PREFIX,
    BUNDLE_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE,
    SIGNATURE_MEDIA_TYPE,
    Reference,
)

log = structlog.get_logger("aiebuild.push")

TITLE = "org.opencontainers.image.title"


def push_build(config: BuildConfig, ref: str) -> Reference:
    """`doit push ref=...`: push the configured target's bundle; print the reference
    by digest (what `aierun pull` and `--artifacts` take to get exactly these bytes)."""
    reference = Reference.parse(ref) if ref else None
    if reference is None or reference.tag is None or reference.digest is not None:
        raise UserError(
            f"ref={ref!r}: name where to publish, as HOST[:PORT]/REPOSITORY:TAG "
            "(e.g. doit push ref=127.0.0.1:5000/aie/smollm2:emu)."
        )
    pinned = push(bundle_path(config.home, select_target(config.target)), reference)
    print(pinned)
    return pinned


def push(bundle: Path, reference: Reference) -> Reference:
    """Publish `bundle` (and `<bundle>.sig` if there) at `reference`; returns the
    reference pinned to the manifest's digest."""
    meta, toolchain = _describe(bundle)
    annotations = {
        TITLE: bundle.name,
        ANNOTATION_PREFIX + "model": str(meta["model"]),
        ANNOTATION_PREFIX + "target": str(meta["target"]),
        ANNOTATION_PREFIX + "schema": str(meta["schema"]),
        ANNOTATION_PREFIX + "toolchain": canonical_json(toolchain),
    }
    files = [f"{bundle}:{BUNDLE_MEDIA_TYPE}"]
    signature = signatures.signature_beside(bundle)
    if signature.is_file():
        files.append(f"{signature}:{SIGNATURE_MEDIA_TYPE}")
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / BUNDLE_META  # the config blob: bundle.json itself
        config.write_text(json.dumps(meta, indent=2, sort_keys=True))
        digest = oras_push(reference, files, f"{config}:{CONFIG_MEDIA_TYPE}", annotations)
    pinned = reference.pinned(digest)
    log.info("push.done", reference=str(reference), pinned=str(pinned),
             signed=signature.is_file(), bundle=str(bundle))  # fmt: skip
    return pinned


def _describe(bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """bundle.json and the toolchain that built the entries (from an artifact.json),
    read from the archive itself: the annotations describe the bytes pushed."""
    if not bundle.is_file():
        raise UserError(f"nothing to push: {bundle} is missing; run `doit pack` first.")
    meta, toolchain = None, None
    with tarfile.open(bundle, "r:gz") as tar:
        for member in tar:
            if member.name == BUNDLE_META:
                meta = json.load(tar.extractfile(member))
            elif toolchain is None and _is_entry_meta(member.name):
                toolchain = json.load(tar.extractfile(member)).get("toolchain", {})
            if meta is not None and toolchain is not None:
                break
    if meta is None:
        raise UserError(f"{bundle} has no {BUNDLE_META}: it was not made by `doit pack`.")
    return meta, toolchain or {}


def _is_entry_meta(name: str) -> bool:
    return name.startswith(f"{ENTRIES}/") and name.endswith(f"/{ENTRY_META}")
