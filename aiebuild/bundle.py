"""`doit pack`: one archive that ships a target's compiled ELFs to machines without
the compiler (docs/design.md section 7). The layout and the checks on the receiving side
are aierun.bundle's: the manifest with its store rewritten to "entries", the
entries it names, bundle.json (schema, target, minimum runtime version, model) and
SHA256SUMS over all of them. Beside the archive: its sha256 (`<bundle>.sha256`) and,
when signed, its OpenSSH signature (`<bundle>.sig`, aierun.signatures).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

import structlog

from aiebuild.tasks import BuildConfig, manifest_path, select_target
from aierun import ARTIFACT_SCHEMA, __version__, signatures
from aierun.artifacts import (
    ENTRY_META,
    MANIFEST,
    ArtifactError,
    ArtifactSet,
    verify_entry,
)
from aierun.bundle import BUNDLE_META, ENTRIES, SUMS, sums_text
from aierun.errors import UserError
from aierun.files import sha256_file, sha256_text, write_atomic

log = structlog.get_logger("aiebuild.bundle")

DIGEST_SUFFIX = ".sha256"


def pack_build(config: BuildConfig, sign_key: str = "") -> Path:
    """`doit pack [sign=KEY]`: bundle the configured target at
    build/bundles/<model>-<target>.tar.gz, write its digest beside it (`<bundle>.sha256`)
    and, with sign=KEY, its OpenSSH signature (`<bundle>.sig`); print the digest and
    path (the task's result, on stdout, as `sha256sum` prints them)."""
    target = select_target(config.target)
    out = bundle_path(config.home, target)
    pack(config.home, target, out)
    digest = write_digest(out)
    signature = signatures.signature_beside(out)
    if sign_key:
        signatures.sign(out, Path(sign_key).expanduser())
        log.info("bundle.signed", signature=str(signature), key=sign_key)
    elif signature.exists():
        # A signature of an earlier pack would be refused with these bytes: not kept.
        signature.unlink()
        log.info("bundle.unsigned", removed=str(signature))
    print(f"{digest}  {out}")
    return out


def bundle_path(home: Path, target: str) -> Path:
    """Where `doit pack` puts the bundle of `target`'s current manifest."""
    artifacts = _open_manifest(home, target)
    return home / "bundles" / f"{artifacts.manifest['model_name']}-{target}.tar.gz"


def write_digest(archive: Path) -> str:
    """The archive's sha256, also written to `<archive>.sha256` in `sha256sum` format
    (so `sha256sum -c` checks it beside the bundle); what `aierun --sha256` takes."""
    digest = sha256_file(archive)
    write_atomic(archive.with_name(archive.name + DIGEST_SUFFIX), f"{digest}  {archive.name}\n")
    return digest


def pack(home: Path, target: str, out_path: Path) -> Path:
    """Write the bundle of `target`'s current manifest to `out_path` (atomically)."""
    artifacts = _open_manifest(home, target)
    files = _entry_files(artifacts)
    documents = _documents(artifacts, target, {n: p.stat().st_size for n, p in files.items()})
    digests = {name: sha256_file(path) for name, path in files.items()}
    digests |= {name: sha256_text(data) for name, data in documents.items()}
    _write_archive(out_path, {SUMS: sums_text(digests).encode(), **documents}, files)
    size = out_path.stat().st_size
    log.info("bundle.packed", path=str(out_path), target=target, files=len(digests), bytes=size)
    return out_path


def _documents(artifacts: ArtifactSet, target: str, sizes: dict[str, int]) -> dict[str, bytes]:
    """manifest.json (pointing at the bundled entries) and bundle.json, which declares
    the size of every file (`sizes`: the entries' files): unpacking writes no more."""
    manifest = json.dumps({**artifacts.manifest, "store": ENTRIES}, indent=2, sort_keys=True)
    meta = {
        "schema": ARTIFACT_SCHEMA,
        "target": target,
        "min_runtime_version": __version__,
        "model": artifacts.manifest["model_name"],
        "sizes": {**sizes, MANIFEST: len(manifest.encode())},
    }
    return {
        MANIFEST: manifest.encode(),
        BUNDLE_META: json.dumps(meta, indent=2, sort_keys=True).encode(),
    }


def _open_manifest(home: Path, target: str) -> ArtifactSet:
    path = manifest_path(home, target)
    if not path.is_file():
        raise UserError(
            f"nothing to pack: no compiled artifacts for target {target} ({path} is missing). "
            f"Run `doit compile target={target}` first."
        )
    return ArtifactSet.open(path)


def _entry_files(artifacts: ArtifactSet) -> dict[str, Path]:
    """Archive name -> file for every entry the manifest names, each verified first:
    a corrupt entry must not travel."""
    files = {}
    for key in sorted(set(artifacts.manifest["elfs"].values())):
        entry = artifacts.store / key
        try:
            meta = verify_entry(entry)
        except ArtifactError as exc:
            raise UserError(f"{exc}. Not packing it: run `doit compile` to rebuild it.") from None
        for name in (ENTRY_META, *meta["files"]):
            files[f"{ENTRIES}/{key}/{name}"] = entry / name
    return files


def _write_archive(out_path: Path, blobs: dict[str, bytes], files: dict[str, Path]) -> None:
    """A gzip tar of `blobs` then `files`, renamed into place only when complete.
    Reproducible: the same artifacts give the same bytes (no timestamps, no owners),
    so an unpacked copy keyed by the archive's hash is reused, not duplicated."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    os.chmod(tmp, 0o644)  # a bundle is for sharing; mkstemp makes it private
    try:
        with (
            os.fdopen(handle, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed,
            tarfile.open(fileobj=packed, mode="w") as tar,
        ):
            for name, data in blobs.items():
                _add(tar, name, len(data), io.BytesIO(data))
            for name, path in files.items():
                with path.open("rb") as source:
                    _add(tar, name, path.stat().st_size, source)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _add(tar: tarfile.TarFile, name: str, size: int, source: BinaryIO) -> None:
    """A plain, ownerless regular file: nothing of the build machine leaks into it."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    tar.addfile(info, source)
