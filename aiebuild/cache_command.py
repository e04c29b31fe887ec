"""`doit cache`: what the artifact store holds, and its garbage collection.

An entry is in use while a target manifest under `<home>/targets/` names its key.
Switching the model or the buckets leaves the old entries in place (switching back
is instant); `doit cache gc=1` removes the ones no manifest names, plus the
temporary directories of interrupted builds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from aiebuild.npu2.target import collect_objects
from aiebuild.store import GC_GRACE_S, Store
from aierun.artifacts import ENTRY_META, MANIFEST
from aierun.errors import UserError

log = structlog.get_logger("aiebuild.cache_command")


@dataclass(frozen=True)
class EntryInfo:
    target: str
    key: str
    elf: str  # the ELF instance it was built as, e.g. "o_ffn.s64"
    size: int  # bytes, all files
    age_s: float  # since it was published
    referenced: bool  # named by a target manifest


def command(home: Path, gc: str) -> None:
    """`doit cache [gc=1]`: collect garbage if asked, then list what remains."""
    if gc not in ("0", "1"):
        raise UserError(f"gc={gc!r}: use `doit cache gc=1` to remove unreferenced entries")
    if gc == "1":
        before = {(e.target, e.key): e.size for e in entries(home)}
        for target, removed in collect_garbage(home).items():
            freed = sum(before.get((target, name), 0) for name in removed)
            print(
                f"{target}: removed {len(removed)} unreferenced or temporary, {_size(freed)} "
                f"(unreferenced entries younger than {GC_GRACE_S / 60:.0f} min are kept)"
            )
    print(format_listing(entries(home)))


def referenced_keys(home: Path) -> dict[Path, set[str]]:
    """Store directory -> the keys the manifests under `<home>/targets/` name in it."""
    referenced: dict[Path, set[str]] = {}
    for manifest in sorted((home / "targets").rglob(MANIFEST)):
        try:
            data = json.loads(manifest.read_text())
            store, keys = (manifest.parent / data["store"]).resolve(), data["elfs"].values()
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            # Guessing here could delete entries a manifest needs: stop instead.
            raise UserError(
                f"{manifest} is unreadable ({exc!r}): fix or delete it, or re-run "
                "`doit compile`, before listing or collecting the store."
            ) from None
        referenced.setdefault(store, set()).update(keys)
    return referenced


def targets(home: Path) -> list[str]:
    cache = home / "cache"
    return sorted(p.name for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []


def entries(home: Path) -> list[EntryInfo]:
    referenced = referenced_keys(home)
    now = time.time()
    found = []
    for target in targets(home):
        store = Store(home, target)
        in_use = referenced.get(store.root.resolve(), set())
        stored = store.keys()
        found += [_describe(store, key, key in in_use, now) for key in stored]
    return found


def _describe(store: Store, key: str, referenced: bool, now: float) -> EntryInfo:
    entry = store.entry(key)
    files = [p for p in entry.rglob("*") if p.is_file()]
    try:
        elf = json.loads((entry / ENTRY_META).read_text()).get("instance", "?")
    except (OSError, ValueError):
        elf = "? (no readable artifact.json)"
    age = now - entry.stat().st_mtime
    return EntryInfo(store.target, key, elf, sum(p.stat().st_size for p in files), age, referenced)


def collect_garbage(home: Path, grace_s: float = GC_GRACE_S) -> dict[str, list[str]]:
    """Remove, per target, the entries no manifest names and leftover temporaries
    (except what is younger than `grace_s`: a compile may be publishing it now)."""
    referenced = referenced_keys(home)
    removed = {}
    for target in targets(home):
        store = Store(home, target)
        keep = referenced.get(store.root.resolve(), set())
        removed[target] = store.collect_garbage(keep, grace_s)
        if target == "npu2":  # the kernel objects the kept npu2 ELFs do not link
            kept = store.keys()  # what survived the collection above
            entries = [store.entry(key) for key in kept]
            if objects := collect_objects(home, entries, grace_s):
                removed["npu2 objects"] = objects
    return removed


def format_listing(found: list[EntryInfo]) -> str:
    if not found:
        return "the artifact store is empty"
    lines = []
    for target in sorted({e.target for e in found}):
        rows = [e for e in found if e.target == target]
        used = sum(e.referenced for e in rows)
        total = _size(sum(e.size for e in rows))
        lines.append(f"{target}: {len(rows)} entries, {total}, {used} used by a manifest")
        lines.append(f"  {'KEY':<12}  {'ELF':<22}  {'SIZE':>10}  {'AGE':>5}  USED")
        for e in sorted(rows, key=lambda e: (not e.referenced, e.elf)):
            flag = "yes" if e.referenced else "no"
            lines.append(
                f"  {e.key[:12]}  {e.elf:<22}  {_size(e.size):>10}  {_age(e.age_s):>5}  {flag}"
            )
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f}{unit}"
    return f"{seconds:.0f}s"
