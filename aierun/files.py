"""File helpers shared by the build and the runtime: content hashes, and writes and
directory publishes that never leave a half-written file or directory behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from aierun.errors import UserError

# How long a command waits for a lock another process holds before it gives up.
LOCK_WAIT_S = 600.0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` through a temporary file in the same directory, then rename. Only a
    regular file (or nothing) is replaced: a symlink, a FIFO or a device at `path` is
    refused rather than destroyed."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(
            f"{path} exists and is not a regular file: refusing to replace it; name a new "
            "file or a regular one to overwrite."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path, min_age_s: float = 60.0) -> list[Path]:
    """Remove the temporaries `write_atomic` left beside `path` when its process was
    killed. One younger than `min_age_s` may belong to a writer running now: kept."""
    removed = []
    cutoff = time.time() - min_age_s
    for tmp in path.parent.glob(f".{path.name}.*"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another process removed it first
            pass
    return removed


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# -- directories published whole -----------------------------------------------------------
# A store entry, a compiled kernel object, an unpacked bundle: each is filled in a private
# staging directory beside its final place (a name starting with a dot), then renamed
# into place at once, so a reader sees all of it or none.
@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A fresh directory beside `final` to fill; removed afterwards whatever happens
    (after `publish_dir` it is already gone). Its name carries this process's id, so
    the staging directories of processes that died (kill -9) are removed here, by the
    next one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name[:12]}."
    remove_dead_staging(final.parent, prefix)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=final.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_dead_staging(parent: Path, prefix: str) -> list[Path]:
    """Remove the staging directories `<prefix><pid>.*` in `parent` whose process is no
    longer alive; returns them."""
    removed = []
    for path in parent.glob(f"{prefix}*.*"):
        pid = path.name[len(prefix) :].split(".", 1)[0]
        if path.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def publish_dir(staging: Path, final: Path, is_valid: Callable[[Path], bool]) -> bool:
    """Rename the filled `staging` to `final`. A valid `final` (another process was
    first: same content) is kept and `staging` dropped; an invalid one is moved aside and
    deleted first. Returns whether `staging` became `final`."""
    if final.exists() and is_valid(final):
        shutil.rmtree(staging)
        return False
    if final.exists():
        remove_tree(final)
    try:
        os.rename(staging, final)
    except OSError:  # a concurrent publisher renamed its copy in between
        if not is_valid(final):
            raise
        shutil.rmtree(staging)
        return False
    return True


def remove_tree(path: Path) -> None:
    """Make `path` vanish at once (renamed into a trash directory beside it), then
    delete it: a reader never sees it half deleted."""
    trash = Path(tempfile.mkdtemp(prefix=".trash.", dir=path.parent))
    path.rename(trash / path.name)
    shutil.rmtree(trash)


# -- cross-process locks -------------------------------------------------------------------
@contextlib.contextmanager
def holding(lock_file: Path, what: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the cross-process lock `lock_file` (guarding `what`). When another process
    holds it, say so on stderr at once rather than wait in silence, and give up after
    `wait_s` with a message that names the lock."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        print(f"waiting for {what}: another process holds {lock_file} (for at most "
              f"{wait_s:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
        try:
            lock.acquire(timeout=wait_s)
        except Timeout:
            raise UserError(
                f"gave up after {wait_s:.0f} s waiting for {what}: another process still "
                f"holds {lock_file}. Let it finish, or stop it, and try again."
            ) from None
    try:
        yield
    finally:
        lock.release()
