"""A GGUF file as a model directory, with no converted copy of its weights.

`derive` writes, beside (or pointing to) the GGUF file, what the runtime reads from a
model directory: config.json, tokenizer.json and tokenizer_config.json (its chat
template) as transformers derives them from the file's metadata, and `gguf.json`, the
index of its tensors (HF name -> GGUF type, shape, byte offset). The weights stay in
the GGUF file and are memory-mapped from it: as blocks (`GgufTensor.blocks`) for the
kernels that read quantized weights, or dequantized (`GgufTensor.read`) with the
`gguf` package's reference numerics (the ones llama.cpp and transformers use).

llama.cpp's converter permutes the rows of the Q and K projections of Llama models
(convert_hf_to_gguf.py `LlamaModel.permute`, ggml-org/llama.cpp); the index records the
head count to undo it with, as transformers does (modeling_gguf_pytorch_utils.py
`LlamaTensorProcessor`). The permutation moves whole rows, so it is undone on blocks
as on values.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from aierun.abi import QUANT_DTYPES
from aierun.errors import UserError
from aierun.files import write_json_atomic
from aierun.ops import quant

INDEX = "gguf.json"
# 2: the index records the GGUF file's sha256 (a copy without its mtime is still current)
INDEX_SCHEMA = 2
# The GGUF architectures whose tensors are read, and whether llama.cpp permuted the
# rows of their Q/K projections.
PERMUTED_QK = {"llama": True}
PLAIN_TYPES = {"F32": np.float32, "F16": np.float16}

log = structlog.get_logger("aierun.model")


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of a GGUF file: where its bytes are and how to read them."""

    file: Path
    offset: int  # of its first byte, from the start of the file
    type: str  # GGML type name: F32, F16, BF16, Q4_0, Q4_1, Q8_0, ...
    shape: tuple[int, ...]  # numpy order: [rows, columns] for a matrix
    nbytes: int
    heads: int | None = None  # llama.cpp permuted its rows by this many heads

    def raw(self) -> np.ndarray:
        """Its stored bytes, memory-mapped: [rows, bytes per row] for a matrix."""
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        raw = np.memmap(self.file, np.uint8, "r", offset=self.offset, shape=(self.nbytes,))
        return raw.reshape(rows, self.nbytes // rows)

    def read(self) -> np.ndarray:
        """Its values as fp32 (plain types as stored), rows in the checkpoint's order."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        if self.type in PLAIN_TYPES:
            values = self.raw().view(PLAIN_TYPES[self.type]).reshape(self.shape)
        elif self.type.lower() in QUANT_DTYPES:  # the kernels' block types: vectorized
            # (the same values as the gguf package's row-by-row dequantization,
            # tests/ops/test_quant.py, in a tenth of the time)
            blocks = quant.from_gguf(self.raw(), self.type.lower())
            values = quant.dequantized(blocks).reshape(self.shape)
        else:
            values = dequantize(self.raw(), GGMLQuantizationType[self.type]).reshape(self.shape)
        return _unpermute(values, self.heads)

    def blocks(self) -> np.ndarray:
        """Its quantized blocks, uint8 [rows, bytes per row], rows in the checkpoint's
        order (a copy only when llama.cpp's row permutation is undone)."""
        return _unpermute(self.raw(), self.heads)


def _unpermute(rows: np.ndarray, heads: int | None) -> np.ndarray:
    """Undo llama.cpp's interleaving of each head's rows (pairs -> halves)."""
    if heads is None:
        return rows
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def find_gguf(path: Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the only *.gguf in a directory
    that is no Hugging Face checkpoint (has no config.json)."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise UserError(f"{path} holds several GGUF files ({names}): pass --model FILE.gguf")
    return files[0] if files else None


def derived_dir(gguf_file: Path, models_dir: Path) -> Path:
    """Where the model directory of a user's GGUF file goes: named by the file and a
    hash of its absolute path, so two files of one name do not share it."""
    digest = hashlib.sha256(str(gguf_file.resolve()).encode()).hexdigest()[:12]
    return models_dir / "gguf" / f"{gguf_file.stem}-{digest}"


def is_current(model_dir: Path) -> bool:
    """Whether `model_dir` was derived from its GGUF file as that file is now."""
    try:
        index = json.loads((model_dir / INDEX).read_text(encoding="utf-8"))
        stat = _gguf_file(model_dir, index).stat()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if index.get("schema") != INDEX_SCHEMA or index.get("size") != stat.st_size:
        return False
    if not all((model_dir / name).is_file() for name in ("config.json", "tokenizer.json")):
        return False
    # The same mtime: the same file. A copied directory (`cp -r`, scp) keeps the bytes
    # but not the mtime: then the contents decide.
    return index.get("mtime_ns") == stat.st_mtime_ns or index.get("sha256") == _sha256(
        _gguf_file(model_dir, index)
    )


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def derive(gguf_file: Path, out: Path, file_ref: str | None = None) -> None:
    """Write config, tokenizer and tensor index of `gguf_file` into the directory `out`.
    `file_ref` is how the index names the file (a name inside `out`, or else its
    absolute path)."""
    from gguf import GGUFReader

    log.info("model.gguf.derive", file=str(gguf_file), out=str(out))  # tens of seconds
    try:
        reader = GGUFReader(gguf_file)
    except (ValueError, OSError) as exc:
        raise UserError(f"{gguf_file} is not a readable GGUF file ({exc})") from None
    arch = _field(reader, "general.architecture")
    if arch not in PERMUTED_QK:
        raise UserError(
            f"{gguf_file} holds a {arch!r} model; GGUF files of {sorted(PERMUTED_QK)} "
            "models are read."
        )
    config = _write_hf_files(gguf_file, out)
    stat = gguf_file.stat()
    tensors = _tensor_index(reader, arch, config)
    write_json_atomic(out / INDEX, {
        "schema": INDEX_SCHEMA, "file": file_ref or str(gguf_file.resolve()),
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(gguf_file),
        "architecture": arch,
        "tensors": tensors,
    })  # fmt: skip


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise UserError(f"{reader.data.filename}: its metadata lacks {key!r}")
    return field.contents()


def _write_hf_files(gguf_file: Path, out: Path) -> dict[str, Any]:
    """config.json and the tokenizer files, as transformers reads them from the GGUF's
    metadata (no tensor is read)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except ImportError as exc:  # transformers reads GGUF metadata only with torch installed
        raise UserError(
            f"reading the config and tokenizer of {gguf_file} needs transformers' GGUF "
            f"reader, which needs torch ({exc}): pip install 'aie-llm[reference]' once, or "
            "copy a model directory derived on another machine"
        ) from None
    # The config describes the model; the runtime reads each tensor in its own type.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(out)
    return config.to_dict()


def _tensor_index(reader: Any, arch: str, config: dict[str, Any]) -> dict[str, dict]:
    """HF tensor name -> where its bytes are in the file (gguf's own name map)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    model_arch = next(a for a, name in MODEL_ARCH_NAMES.items() if name == arch)
    name_map = get_tensor_name_map(model_arch, config["num_hidden_layers"])
    by_gguf_name = {t.name: t for t in reader.tensors}
    index = {}
    for hf_name in _hf_tensor_names(config):
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        tensor = by_gguf_name.get(gguf_name)
        if tensor is None:
            continue  # a tied LM head is absent: the checkpoint resolves it
        index[hf_name] = {
            "gguf_name": gguf_name,
            "type": tensor.tensor_type.name,
            "shape": [int(d) for d in reversed(tensor.shape.tolist())],
            "offset": int(tensor.data_offset),  # from the start of the file
            "nbytes": int(tensor.n_bytes),
            "heads": _permuted_heads(hf_name, arch, config),
        }
    return index


def _hf_tensor_names(config: dict[str, Any]) -> list[str]:
    layer = [
        "input_layernorm.weight", "post_attention_layernorm.weight",
        *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    ]  # fmt: skip
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(config["num_hidden_layers"]):
        names += [f"model.layers.{i}.{name}" for name in layer]
    return names


def _permuted_heads(hf_name: str, arch: str, config: dict[str, Any]) -> int | None:
    if not PERMUTED_QK[arch]:
        return None
    if hf_name.endswith("q_proj.weight"):
        return config["num_attention_heads"]
    if hf_name.endswith("k_proj.weight"):
        return config["num_key_value_heads"]
    return None


def _gguf_file(model_dir: Path, index: dict[str, Any]) -> Path:
    return model_dir / index["file"]  # an absolute path stays absolute


def gguf_file(model_dir: Path) -> Path | None:
    """The GGUF file a derived model directory reads its weights from (None: not one)."""
    try:
        return _gguf_file(model_dir, json.loads((model_dir / INDEX).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{model_dir / INDEX} cannot be read ({exc!r}): delete {model_dir} "
                        "and run again, it is derived from the GGUF file") from None  # fmt: skip


def tensors(model_dir: Path) -> dict[str, GgufTensor]:
    """The tensor index of a derived model directory, checked against its file."""
    index_file = model_dir / INDEX
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        file = _gguf_file(model_dir, index)
        entries = {
            name: GgufTensor(
                file, e["offset"], e["type"], tuple(e["shape"]), e["nbytes"], e["heads"]
            )  # fmt: skip
            for name, e in index["tensors"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{index_file} cannot be read ({exc!r}): delete {model_dir} and run again, it "
            "is derived from the GGUF file"
        ) from None
    _check_file(file, index, model_dir)
    return entries


def _check_file(file: Path, index: dict[str, Any], model_dir: Path) -> None:
    if not file.is_file():
        raise UserError(
            f"{model_dir} reads its weights from {file}, which is gone: put the GGUF file "
            f"back, or pass --model with its new path"
        )
    size = os.stat(file).st_size
    if size != index["size"]:
        raise UserError(
            f"{file} is {size} bytes, but {model_dir / INDEX} was made from a {index['size']}-"
            f"byte file: delete {model_dir} (it is derived again from the file)"
        )


def transformers_location(model_dir: Path) -> tuple[Path, dict[str, str]]:
    """What to pass transformers' `from_pretrained` for the weights of `model_dir`: the
    directory itself, or for a model run from a GGUF file that file (transformers
    reads its blocks itself)."""
    gguf = gguf_file(model_dir)
    if gguf is None:
        return model_dir, {}
    return gguf.parent, {"gguf_file": gguf.name}
