"""The content-addressed artifact store (DESIGN.md section 7).

An entry's key is the sha256 of a canonical JSON of everything that determines
its bytes: store schema, target, the ELF spec, the sha256 of every source file
that feeds it and the toolchain fingerprint. Entries live in
`<home>/cache/<target>/<key>/`, are published atomically (built in a temporary
directory, then renamed) and never modified; an entry whose files no longer
match their sha256 is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from aierun.abi import canonical_json
from aierun.artifacts import ENTRY_META, ArtifactError, sha256_file, verify_entry

STORE_SCHEMA = 1
log = structlog.get_logger("aiebuild.store")


def content_key(
    target: str, spec: Mapping[str, Any], sources: Mapping[str, str], toolchain: Mapping[str, Any]
) -> str:
    payload = {
        "store_schema": STORE_SCHEMA,
        "target": target,
        "spec": spec,
        "sources": dict(sorted(sources.items())),
        "toolchain": toolchain,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class Store:
    def __init__(self, root: Path, target: str):
        self.target = target
        self.root = Path(root) / "cache" / target

    def entry(self, key: str) -> Path:
        return self.root / key

    def is_valid(self, key: str) -> bool:
        """True if the entry exists and every file matches its sha256."""
        entry = self.entry(key)
        if not entry.exists():
            return False
        try:
            verify_entry(entry)
        except (ArtifactError, OSError, ValueError, KeyError) as exc:
            log.warning("store.corrupt", key=key[:12], reason=str(exc))
            return False
        return True

    def publish(self, key: str, meta: dict[str, Any], files: Mapping[str, Path | bytes]) -> Path:
        """Write an entry atomically; a corrupt entry under the same key is replaced."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.root))
        try:
            listing = {}
            for name, content in files.items():
                path = staging / name
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    shutil.copyfile(content, path)
                listing[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
            record = {**meta, "key": key, "target": self.target, "files": listing}
            (staging / ENTRY_META).write_text(json.dumps(record, indent=2, sort_keys=True))
            final = self.entry(key)
            if final.exists():  # only a corrupt entry gets here: set it aside, then swap
                trash = Path(tempfile.mkdtemp(prefix=".trash.", dir=self.root))
                final.rename(trash / key)
                shutil.rmtree(trash)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.entry(key)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        json.dump(data, out, indent=2, sort_keys=True)
    os.replace(tmp, path)
