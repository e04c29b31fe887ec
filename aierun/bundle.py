"""Bundles on the runtime side: check an archive made by `doit pack` and unpack it.

A bundle is one archive (tar, usually gzip-compressed) holding:

    SHA256SUMS                  `sha256sum` format: every other file, with its sha256
    bundle.json                 schema, target, min_runtime_version, model, created
    manifest.json               the target manifest, its store rewritten to "entries"
    entries/<key>/...           the store entries the manifest names

It may come from anywhere, so nothing in it is trusted before it is checked:
every member must be a regular file (or a directory) at a relative path without
`..`, every file must be listed in SHA256SUMS and match its hash, and the bundle
must be one this runtime and device can run. Before any of that, the archive
itself may have to match a pinned sha256 (--sha256) and pass the signature policy
(aierun.signatures). Unpacking is atomic (into a
temporary directory, checked, then renamed) into `<cache_dir>/<sha256 of the
archive>/`, which later runs reuse after re-checking the hashes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
from packaging.version import InvalidVersion, Version

from aierun import ARTIFACT_SCHEMA, OLDER_SCHEMA, __version__, paths, signatures
from aierun.artifacts import ENTRY_META, KEY_PATTERN, MANIFEST, ArtifactError
from aierun.files import publish_dir, sha256_file, staging_dir
from aierun.signatures import Trust

log = structlog.get_logger("aierun.bundle")

SUMS = "SHA256SUMS"
BUNDLE_META = "bundle.json"
ENTRIES = "entries"
REQUIRED = (BUNDLE_META, MANIFEST)
DOCUMENTS = (SUMS, *REQUIRED)  # read and checked before anything is written
MAX_DOCUMENT_BYTES = 16 * 2**20
MAX_MEMBERS = 100_000
# Compiled ELFs and launch plans, no weights: a bundle beyond this is not ours.
DEFAULT_MAX_UNPACKED_BYTES = 2**30
LIMIT_ENV = "AIERUN_MAX_BUNDLE_BYTES"
REPACK = "get an intact copy of the bundle, or re-run `doit pack` where it was built"
# What a damaged or non-tar archive raises while it is read.
_READ_ERRORS = (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error)


def open_bundle(
    archive: Path,
    cache_dir: Path,
    targets: tuple[str, ...] | None = None,
    *,
    sha256: str | None = None,
    trust: Trust | None = None,
    signature: Path | None = None,
) -> Path:
    """Check and unpack `archive` (or reuse its intact unpacked copy); returns the
    directory holding manifest.json. `targets`: what the device can run (None: any).
    Before any member is read: the archive must hash to `sha256` (--sha256) when
    given, and pass the signature policy `trust` (None: no policy) with `signature`
    (None: unsigned)."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArtifactError(f"bundle {archive}: no such file; pass an archive made by `doit pack`")
    digest = sha256_file(archive)
    if sha256 is not None and digest != sha256:
        raise _refuse(
            archive,
            f"its sha256 is {digest}, not the {sha256} that --sha256 asks for",
            "get the bundle whose digest you were given, or check the digest",
        )
    if trust is not None:
        signatures.check(archive, signature, trust)
    final = Path(cache_dir) / digest
    if _is_intact(final):
        log.info("bundle.reuse", bundle=str(archive), path=str(final))
        documents = {name: (final / name).read_bytes() for name in DOCUMENTS}
        _check_documents(documents, archive, targets)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _open_tar(archive) as tar:
        members, listed = _scan(tar, archive, targets)  # everything is checked before writing
        _check_free_space(archive, sum(m.size for m in members), final.parent)
        with staging_dir(final) as staging:
            for member in members:
                _extract_member(tar, member, staging, archive)
            _verify_files(staging, listed, archive)
            # a copy another process installed meanwhile is kept (same archive, same bytes)
            publish_dir(staging, final, _is_intact)
    log.info("bundle.unpacked", bundle=str(archive), path=str(final))
    return final


def sums_text(digests: dict[str, str]) -> str:
    """SHA256SUMS content for {name: sha256}, readable by `sha256sum -c` too."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items()))


def parse_sums(text: str, archive: Path) -> dict[str, str]:
    """{normalized path: sha256} from SHA256SUMS text; refuses malformed or unsafe lines."""
    listed = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, _, rest = line.partition(" ")
        name = rest[1:] if rest[:1] in (" ", "*") else ""  # text or binary mode
        if not re.fullmatch("[0-9a-f]{64}", digest) or not name:
            raise _refuse(archive, f"line {number} of {SUMS} is not '<sha256>  <path>'")
        if problem := _path_problem(name):
            raise _refuse(archive, f"{SUMS} lists {name!r}, which {problem}")
        listed[_normalized(name)] = digest
    missing = [name for name in REQUIRED if name not in listed]
    if missing:
        raise _refuse(archive, f"{SUMS} does not list {', '.join(missing)}")
    return listed


# -- unpacking ------------------------------------------------------------------


@contextmanager
def _open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    """The archive for reading; a damaged or non-tar file is refused, not a traceback."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            yield tar
    except _READ_ERRORS as exc:
        reason = " ".join(str(exc).split())  # tarfile's reasons span lines
        raise _refuse(archive, f"it is damaged or not a tar archive ({reason})") from None


def _scan(
    tar: tarfile.TarFile, archive: Path, targets: tuple[str, ...] | None
) -> tuple[list[tarfile.TarInfo], dict[str, str]]:
    """One pass over the member headers, writing nothing. The three documents are
    read (each bounded) as they come and checked as soon as all are in, so a bundle
    for another target or schema is refused before the rest is even decompressed.
    Returns the regular files to extract and SHA256SUMS's {path: sha256}."""
    members: list[tarfile.TarInfo] = []
    documents: dict[str, bytes] = {}
    checked: tuple[dict[str, str], dict[str, int]] | None = None
    for member in tar:
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise _refuse(archive, f"it has more than {MAX_MEMBERS} members")
        name = _normalized(member.name)
        if name in DOCUMENTS and member.isfile() and name not in documents:
            documents[name] = _read_document(tar, member, archive)
            if len(documents) == len(DOCUMENTS):
                checked = _check_documents(documents, archive, targets)
    if SUMS not in documents:
        raise _refuse(archive, f"it has no {SUMS}: it was not made by `doit pack`")
    if checked is None:
        raise _refuse(archive, f"it lacks {', '.join(sorted(set(DOCUMENTS) - set(documents)))}")
    listed, sizes = checked
    files = _checked_members(members, listed, archive)
    _check_sizes(files, sizes, archive)
    return files, listed


def _read_document(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    if member.size > MAX_DOCUMENT_BYTES:
        raise _refuse(archive, f"{member.name} is {member.size} bytes, more than a bundle's "
                      f"{MAX_DOCUMENT_BYTES} for it")  # fmt: skip
    return tar.extractfile(member).read(MAX_DOCUMENT_BYTES)


def _check_documents(
    documents: dict[str, bytes], archive: Path, targets: tuple[str, ...] | None
) -> tuple[dict[str, str], dict[str, int]]:
    """SHA256SUMS, bundle.json and manifest.json, checked against each other and the
    device; returns SHA256SUMS's {path: sha256} and bundle.json's {path: size}."""
    listed = parse_sums(documents[SUMS].decode("utf-8", "replace"), archive)
    meta = _parse_json(documents[BUNDLE_META], BUNDLE_META, archive)
    manifest = _parse_json(documents[MANIFEST], MANIFEST, archive)
    _check_compatible(meta, manifest, archive, targets)
    sizes = _declared_sizes(meta, listed, archive)
    for instance, key in manifest.get("elfs", {}).items():
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise _refuse(archive, f"its {MANIFEST} names {key!r} for {instance}, which is not "
                          "a content key")  # fmt: skip
        if f"{ENTRIES}/{key}/{ENTRY_META}" not in listed:
            raise _refuse(archive, f"its {MANIFEST} names entry {key[:12]}, which it lacks")
    return listed, sizes


def _declared_sizes(meta: dict[str, Any], listed: dict[str, str], archive: Path) -> dict[str, int]:
    """bundle.json's size of every listed file (but itself): what unpacking may write."""
    sizes = meta.get("sizes")
    if not isinstance(sizes, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes.values()
    ):
        raise _refuse(archive, f"its {BUNDLE_META} declares no file sizes (made by an older "
                      "`doit pack`?)")  # fmt: skip
    undeclared = sorted(set(listed) - set(sizes) - {BUNDLE_META})
    if undeclared:
        raise _refuse(archive, f"{BUNDLE_META} declares no size for {undeclared[0]}")
    return sizes


def _check_sizes(files: list[tarfile.TarInfo], sizes: dict[str, int], archive: Path) -> None:
    """Each member must hold what bundle.json declares for it, and all of it must fit
    the limit and the free disk: a small archive cannot unpack into gigabytes."""
    total = 0
    for member in files:
        name = _normalized(member.name)
        if name in sizes and member.size != sizes[name]:
            raise _refuse(archive, f"member {name!r} holds {member.size} bytes, but "
                          f"{BUNDLE_META} declares {sizes[name]}")  # fmt: skip
        total += member.size
    limit = max_unpacked_bytes()
    if total > limit:
        raise _refuse(archive, f"it would unpack to {total} bytes, more than the limit of "
                      f"{limit} ({LIMIT_ENV} raises it)")  # fmt: skip


def _check_free_space(archive: Path, needed: int, where: Path) -> None:
    free = shutil.disk_usage(where).free
    if needed > free:
        raise _refuse(
            archive,
            f"it unpacks to {needed} bytes and {where} has {free} free",
            "free some space there or set AIERUN_HOME to a disk with room",
        )


def max_unpacked_bytes() -> int:
    """The most a bundle may unpack to: generous for compiled ELFs (no weights)."""
    value = os.environ.get(LIMIT_ENV)
    if not value:
        return DEFAULT_MAX_UNPACKED_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ArtifactError(
            f"{LIMIT_ENV}={value!r}: expected a whole number of bytes, e.g. "
            f"{LIMIT_ENV}={4 * DEFAULT_MAX_UNPACKED_BYTES} (unset, it is "
            f"{DEFAULT_MAX_UNPACKED_BYTES})"
        )
    return limit


def _checked_members(
    members: list[tarfile.TarInfo], listed: dict[str, str], archive: Path
) -> list[tarfile.TarInfo]:
    """Refuse anything but regular files and directories at safe relative paths;
    returns the regular files: SHA256SUMS and files it lists, each present once."""
    files, seen = [], set()
    for member in members:
        name = member.name
        if problem := _path_problem(name):
            raise _refuse(archive, f"member {name!r} {problem}")
        if member.issym() or member.islnk():
            kind = "symbolic" if member.issym() else "hard"
            raise _refuse(archive, f"member {name!r} is a {kind} link to {member.linkname!r}")
        if member.isdir():
            continue
        if not member.isfile():
            raise _refuse(archive, f"member {name!r} is a device or special file")
        name = _normalized(name)
        if name in seen:
            raise _refuse(archive, f"member {name!r} appears twice")
        seen.add(name)
        if name != SUMS and name not in listed:
            raise _refuse(archive, f"member {name!r} is not listed in {SUMS}")
        files.append(member)
    return files


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, archive: Path
) -> None:
    try:
        # tarfile's own "data" filter is a second line of defence behind our checks.
        tar.extract(member, staging, filter="data")
    except tarfile.FilterError as exc:
        raise _refuse(archive, f"member {member.name!r} is unsafe ({exc})") from None
    except _READ_ERRORS as exc:
        raise _refuse(archive, f"member {member.name!r} could not be read ({exc})") from None


def _verify_files(root: Path, listed: dict[str, str], archive: Path) -> None:
    """Every listed file must be there and match its sha256."""
    for name, digest in listed.items():
        if not (root / name).is_file():
            raise _refuse(archive, f"{name} is listed in {SUMS} but missing from the bundle")
        if sha256_file(root / name) != digest:
            raise _refuse(
                archive,
                f"file {name} does not match its sha256 in {SUMS}: the bundle is corrupt "
                "or was modified",
            )


def _is_intact(unpacked: Path) -> bool:
    """An earlier unpack of the same archive whose files still match their hashes."""
    sums = unpacked / SUMS
    if not sums.is_file():
        return False
    try:
        listed = parse_sums(sums.read_text(), unpacked)
        _verify_files(unpacked, listed, unpacked)
    except ArtifactError as exc:
        log.warning("bundle.unpacked_copy_damaged", path=str(unpacked), reason=str(exc))
        return False
    return True


# -- compatibility ----------------------------------------------------------------


def _check_compatible(
    meta: dict[str, Any], manifest: dict[str, Any], archive: Path, targets: tuple[str, ...] | None
) -> None:
    """Refuse a bundle of another schema, for a newer runtime or for another target."""
    try:
        schema, target = int(meta["schema"]), str(meta["target"])
        needed = Version(str(meta["min_runtime_version"]))
    except (KeyError, ValueError, TypeError, InvalidVersion) as exc:
        raise _refuse(archive, f"{BUNDLE_META} is malformed ({exc!r})") from None
    if schema > ARTIFACT_SCHEMA:
        raise _refuse(
            archive,
            f"it uses bundle schema {schema}, this runtime reads up to {ARTIFACT_SCHEMA}",
            "upgrade aierun (pip install -U aie-llm) or pack the bundle with this version",
        )
    if schema < ARTIFACT_SCHEMA:
        raise _refuse(
            archive,
            f"it uses bundle schema {schema} ({OLDER_SCHEMA}), this runtime reads "
            f"{ARTIFACT_SCHEMA}",
            "pack it again with this version (doit pack) on the machine that builds",
        )
    if needed > Version(__version__):
        raise _refuse(
            archive,
            f"it needs aierun >= {needed}, this is {__version__}",
            "upgrade aierun (pip install -U aie-llm)",
        )
    if targets is not None and target not in targets:
        raise _refuse(
            archive,
            f"it is for target {target!r}, the device runs {' or '.join(targets)}",
            f"pack a bundle for {targets[0]} (doit pack target={targets[0]}) or use a device "
            f"that runs {target}",
        )
    if manifest.get("target") != target or manifest.get("store") != ENTRIES:
        raise _refuse(archive, f"its {MANIFEST} does not match {BUNDLE_META}")
    if not isinstance(manifest.get("elfs"), dict):
        raise _refuse(archive, f"its {MANIFEST} has no ELF list")


def _parse_json(data: bytes, name: str, archive: Path) -> dict[str, Any]:
    try:
        parsed = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise _refuse(archive, f"{name} is unreadable ({exc})") from None
    if not isinstance(parsed, dict):
        raise _refuse(archive, f"{name} is not a JSON object")
    return parsed


def _path_problem(name: str) -> str | None:
    """Why `name` may not be unpacked as is, if it may not."""
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):  # "/x" or "C:x"
        return "has an absolute path"
    if ".." in path.parts:
        return "points outside the bundle ('..')"
    if "\\" in name:
        return "uses backslashes, which are not portable path separators"
    if any(len(part.encode()) > NAME_MAX for part in path.parts):
        return f"has a file name longer than {NAME_MAX} bytes, which no file system holds"
    return None


# The longest file name (one path component) Linux file systems take (ext4, xfs, tmpfs:
# NAME_MAX in <linux/limits.h>); doit pack never writes one, so it is a damaged bundle.
NAME_MAX = 255


def _normalized(name: str) -> str:
    """The path as SHA256SUMS spells it ("./a//b/" -> "a/b")."""
    return str(PurePosixPath(name))


def _refuse(archive: Path, reason: str, advice: str = REPACK) -> ArtifactError:
    return ArtifactError(f"refusing bundle {archive}: {reason}. Nothing from it is used: {advice}.")


# -- `aierun unpack` ----------------------------------------------------------------


def open_local(archive: Path, targets: tuple[str, ...] | None, args: argparse.Namespace) -> Path:
    """A bundle archive named on the command line, checked as its flags say (--sha256,
    --trust, --require-signed), its signature being `<archive>.sig` if there."""
    return open_bundle(
        archive,
        paths.home() / "bundles",
        targets,
        sha256=args.sha256,
        trust=Trust.from_flags(args.trust, args.require_signed),
        signature=signatures.signature_beside(archive),
    )


def cmd_unpack(args: argparse.Namespace) -> int:
    """Check and unpack a bundle for the device; print the directory to pass as --artifacts."""
    from aierun.devices import device_targets

    print(open_local(Path(args.bundle).expanduser(), device_targets(args.device), args))
    return 0
