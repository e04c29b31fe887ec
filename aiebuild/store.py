"""The content-addressed artifact store (docs/design.md section 7).

An entry's key is the sha256 of a canonical JSON of everything that determines
its bytes: store schema, target, the ELF spec, the sha256 of every source file
that feeds it and the toolchain fingerprint. Entries live in
`<home>/cache/<target>/<key>/`, are published atomically (built in a temporary
directory, then renamed) and never modified; an entry whose files no longer
match their sha256 is rebuilt, never used.

Every change to a target's store (publish, garbage collection) holds a
cross-process file lock, so parallel builds (`doit -n 2`, two terminals) and a
concurrent `doit cache gc=1` cannot trip over each other. Names starting with a
dot are the store's own: the lock file and temporary directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import structlog

from aierun.abi import canonical_json
from aierun.artifacts import (
    ENTRY_META,
    PINS,
    STORE_LOCK,
    ArtifactError,
    pinned_keys,
    verify_entry,
)
from aierun.files import holding, publish_dir, remove_tree, sha256_file, staging_dir

STORE_SCHEMA = 1
LOCK = STORE_LOCK
# Entries younger than this survive garbage collection (see collect_garbage).
GC_GRACE_S = 600.0
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

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The lock every change to this target's store holds (a fresh one per use, so
        it also works across threads and forked doit workers)."""
        return holding(self.root / LOCK, f"the {self.target} artifact store")

    def publish(self, key: str, meta: dict[str, Any], files: Mapping[str, Path | bytes]) -> Path:
        """Write an entry atomically; a corrupt entry under the same key is replaced.

        Staging happens under the lock too: any temporary directory seen while holding
        it is debris of an interrupted process, which garbage collection may remove.
        """
        final = self.entry(key)
        with self.lock():
            if self.is_valid(key):  # another process published the same content first
                log.debug("store.already_published", key=key[:12], target=self.target)
                return final
            with staging_dir(final) as staging:
                self._fill(staging, key, meta, files)
                publish_dir(staging, final, lambda _: self.is_valid(key))
        return final

    def adopt(
        self,
        key: str,
        fill: Callable[[Path], None],
        check: Callable[[Path, dict[str, Any]], None] = lambda entry, meta: None,
    ) -> Path:
        """Publish an entry made elsewhere (a remote cache): `fill` writes its files,
        artifact.json included, into an empty directory named `key`, which must then pass
        `verify_entry` as any entry does, and `check` (given its artifact.json), before it
        is renamed into place (atomically, under the lock, like `publish`). An
        ArtifactError (or what `fill` and `check` raise) says why it was refused."""
        final = self.entry(key)
        with self.lock():
            if self.is_valid(key):
                return final
            with staging_dir(final) as staging:
                entry = staging / key  # verify_entry: the directory's name is the key
                entry.mkdir()
                fill(entry)
                check(entry, verify_entry(entry))
                publish_dir(entry, final, lambda _: self.is_valid(key))
        return final

    def _fill(
        self, staging: Path, key: str, meta: dict[str, Any], files: Mapping[str, Path | bytes]
    ) -> None:
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

    def collect_garbage(self, keep: Collection[str], grace_s: float = GC_GRACE_S) -> list[str]:
        """Remove every entry whose key is not in `keep` and the temporary directories
        interrupted processes left behind; returns the removed names. Anything newer
        than `grace_s` stays: a compile running now may have published it without
        having written its manifest yet; so does every entry a running process has
        pinned (aierun.artifacts.pin_entries: a run about to load it)."""
        if not self.root.is_dir():
            return []
        removed = []
        cutoff = time.time() - grace_s
        with self.lock():
            keep = {*keep, *pinned_keys(self.root)}
            for path in sorted(self.root.iterdir()):
                if path.name in (LOCK, PINS) or path.name in keep or path.stat().st_mtime > cutoff:
                    continue
                if path.is_dir():
                    remove_tree(path)
                else:
                    path.unlink()
                removed.append(path.name)
        log.info("store.gc", target=self.target, removed=len(removed), kept=len(self.keys()))
        return removed

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))
