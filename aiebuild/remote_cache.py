"""`doit compile cache=HOST/REPO`: an OCI registry as a remote cache of store entries.

Before an ELF whose content key is not in the local store is built, its entry is
fetched from `HOST/REPO:<key>` (a sha256 hex key is a valid tag); after one is built
here, it is pushed there. A team compiles each ELF once.

An entry is an OCI artifact: one image manifest whose config is the entry's
artifact.json (ENTRY_CONFIG_MEDIA_TYPE) and whose one layer is the entry directory
as an uncompressed tar (ENTRY_MEDIA_TYPE). Nothing fetched is trusted: the layer must
match its descriptor's digest and size (aierun.registry), hold only plain files, and
the unpacked directory must pass the same `verify_entry` as a local entry (every
file's size and sha256, the directory named by its key), be of this target, and
carry the launch plan this build would write, before `Store.adopt` renames it into
the store atomically. A registry that cannot be reached, or answers something that is
not an entry, is one warning, and the run goes on without it: the cache is an
optimisation, never a reason to fail.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from aiebuild.oci import oras_push
from aiebuild.store import Store
from aierun.artifacts import ENTRY_META, PLAN, ArtifactError, verify_entry
from aierun.errors import UserError
from aierun.registry import (
    ANNOTATION_PREFIX,
    NotFound,
    Reference,
    RegistryError,
    check_descriptor,
    client_for,
    fetch_blob,
    fetch_manifest,
    parse_manifest,
)

log = structlog.get_logger("aiebuild.compile")

ENTRY_ARTIFACT_TYPE = "application/vnd.aie-llm.entry.v1"
ENTRY_MEDIA_TYPE = "application/vnd.aie-llm.entry.v1.tar"
ENTRY_CONFIG_MEDIA_TYPE = "application/vnd.aie-llm.entry.config.v1+json"
MAX_ENTRY_BYTES = 2 * 2**30  # an npu2 entry is an ELF of a few MiB and its plan
MAX_ENTRY_FILES = 64
REPUSH = "it is built here instead and pushed again"


class _Refused(Exception):
    """This entry, as the registry holds it, is not one we can use."""


@dataclass
class RemoteCache:
    """The registry repository `HOST[:PORT]/REPO` as a cache, and what this run did with
    it (counted for the summary line). Plain data, so doit can hand it to workers."""

    location: str
    fetched: int = 0
    built: int = 0
    pushed: int = 0
    refused: int = 0
    unavailable: str | None = None  # why the registry is skipped for the rest of the run

    @classmethod
    def parse(cls, text: str) -> RemoteCache:
        if Reference.parse(f"{text}:{'0' * 64}") is None:
            raise UserError(
                f"cache={text!r}: name a registry repository as HOST[:PORT]/REPOSITORY, "
                "without a tag (e.g. cache=127.0.0.1:5000/aie/cache): entries are tagged "
                "by their content key."
            )
        return cls(text)

    def reference(self, key: str) -> Reference:
        return Reference.parse(f"{self.location}:{key}")

    # -- fetch ------------------------------------------------------------------------
    def fetch(self, store: Store, key: str, plan: bytes) -> bool:
        """Fetch, verify and publish the entry `key` into `store`; False when the cache
        has none, holds a bad one, or cannot be used (then the caller builds it)."""
        if self.unavailable is not None:
            return False
        reference = self.reference(key)
        try:
            client = client_for(reference.host)
            manifest = parse_manifest(
                fetch_manifest(client, reference), reference, ENTRY_CONFIG_MEDIA_TYPE,
                ENTRY_ARTIFACT_TYPE, "point cache= at a repository of compiled entries",
            )  # fmt: skip
        except NotFound:
            log.info("compile.cache_miss", key=key[:12], cache=self.location)
            return False
        except RegistryError as exc:  # down, refusing us, or not a registry of entries
            self._give_up(exc)
            return False
        try:
            layer = _entry_layer(manifest, reference)
            store.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".fetch.", dir=store.root) as scratch:
                tar = fetch_blob(client, reference, layer, Path(scratch), MAX_ENTRY_BYTES)
                store.adopt(key, _unpack(tar), _checker(store.target, plan))
        except (RegistryError, ArtifactError, _Refused) as exc:
            self.refused += 1
            log.warning("compile.cache_refused", key=key[:12], cache=self.location,
                        reason=str(exc), note=REPUSH)  # fmt: skip
            return False
        self.fetched += 1
        log.info("compile.cache_hit", key=key[:12], cache=self.location)
        return True

    # -- push -------------------------------------------------------------------------
    def push(self, entry: Path) -> bool:
        """Push the entry directory `entry` (just built and published here) under its key."""
        self.built += 1
        if self.unavailable is not None:
            return False
        meta = verify_entry(entry)
        reference = self.reference(entry.name)
        annotations = {
            ANNOTATION_PREFIX + "target": str(meta.get("target")),
            ANNOTATION_PREFIX + "instance": str(meta.get("instance")),
            ANNOTATION_PREFIX + "key": entry.name,
        }
        with tempfile.TemporaryDirectory() as scratch:
            tar = Path(scratch) / f"{entry.name}.tar"
            tar.write_bytes(entry_tar(entry, meta))
            config = f"{entry / ENTRY_META}:{ENTRY_CONFIG_MEDIA_TYPE}"
            try:
                oras_push(reference, [f"{tar}:{ENTRY_MEDIA_TYPE}"], config, annotations)
            except RegistryError as exc:
                self._give_up(exc)
                return False
        self.pushed += 1
        log.info("compile.cache_push", key=entry.name[:12], cache=self.location)
        return True

    def _give_up(self, exc: Exception) -> None:
        self.unavailable = str(exc)
        note = "building locally; the cache is skipped for the rest of this run"
        log.warning("compile.cache_unavailable", cache=self.location, reason=str(exc), note=note)

    def summary(self) -> None:
        """One line: how many entries were fetched, built here, pushed, refused."""
        log.info("compile.cache_summary", cache=self.location, fetched=self.fetched,
                 built=self.built, pushed=self.pushed, refused=self.refused,
                 unavailable=self.unavailable is not None)  # fmt: skip


def entry_tar(entry: Path, meta: dict) -> bytes:
    """The entry's files (artifact.json and those it lists) as a reproducible tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted({ENTRY_META, *meta["files"]}):
            data = (entry / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _entry_layer(manifest: dict, reference: Reference) -> dict:
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise _Refused(f"{reference}: its manifest must hold exactly one layer")
    if layers[0].get("mediaType") != ENTRY_MEDIA_TYPE:
        raise _Refused(f"{reference}: its layer is {layers[0].get('mediaType')!r}, not "
                       f"{ENTRY_MEDIA_TYPE}")  # fmt: skip
    check_descriptor(layers[0], reference)
    return layers[0]


def _unpack(tar: Path) -> Callable[[Path], None]:
    """Fill an entry directory from the fetched tar: plain files with plain names only,
    each written by us (nothing of tarfile's extraction: no links, modes, owners)."""

    def fill(entry: Path) -> None:
        try:
            with tarfile.open(tar, "r:") as archive:
                for count, member in enumerate(archive, 1):
                    name = member.name
                    if count > MAX_ENTRY_FILES or not member.isfile():
                        raise _Refused(f"its layer holds {name!r}, which is not a plain file "
                                       f"(or more than {MAX_ENTRY_FILES} files)")  # fmt: skip
                    if "/" in name or name.startswith(".") or (entry / name).exists():
                        raise _Refused(f"its layer holds a file named {name!r}")
                    (entry / name).write_bytes(archive.extractfile(member).read())
        except tarfile.TarError as exc:
            raise _Refused(f"its layer is not a tar archive ({exc})") from None

    return fill


def _checker(target: str, plan: bytes) -> Callable[[Path, dict], None]:
    """What `verify_entry` does not check of a fetched entry: nothing but its listed
    files, this target, and the launch plan this build makes for the key."""

    def check(entry: Path, meta: dict) -> None:
        present = {p.name for p in entry.iterdir()} - {ENTRY_META}
        if set(meta["files"]) != present:
            raise _Refused("its files are not exactly those its artifact.json lists")
        if meta.get("target") != target:
            raise _Refused(f"it is an entry for target {meta.get('target')!r}, not {target}")
        if not (entry / PLAN).is_file() or (entry / PLAN).read_bytes() != plan:
            raise _Refused("its launch plan is not the one this build makes for the key")

    return check
