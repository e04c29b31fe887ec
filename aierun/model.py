"""A Llama-family model directory: shape, weights (memory-mapped), tokenizer.

The weights are memory-mapped from safetensors files (a Hugging Face checkpoint) or
from a GGUF file (a directory `aierun.gguf_model` derived from it). The shape is
what the build derives ELF specs from and what a manifest is checked against.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aierun import gguf_model
from aierun.abi import BF16
from aierun.errors import UserError
from aierun.files import holding, publish_dir, staging_dir
from aierun.tokenizer import FastTokenizer

SUPPORTED_ROPE = ("default", "llama3")
# The Hugging Face architectures this runtime implements, by their config.json
# `architectures` name, with the model_type each carries. All are RMSNorm, rope, GQA and
# SwiGLU decoders; they differ in what ModelShape.attention_bias and qk_norm record.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",  # q/k/v projections with a bias
    "Qwen3ForCausalLM": "qwen3",  # a per-head RMSNorm of q and k before rope
}
# Settings that change the computation in a way no ELF implements: refused by name.
_UNSUPPORTED_FLAGS = ("mlp_bias", "use_sliding_window")


def _require_positive(config: dict[str, Any], key: str) -> None:
    if key not in config:
        raise UserError(f"lacks {key}, a setting a Llama-family model needs.")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"has {key} = {value!r}, where a whole number of 1 or more is needed.")


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    hidden: int  # E
    n_heads: int  # H
    n_kv_heads: int  # Hkv
    head_dim: int  # Dh
    ffn: int  # F
    vocab: int  # V
    rms_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...] | None
    tie_embeddings: bool
    max_positions: int
    family: str = "llama"  # the model_type of SUPPORTED_ARCHITECTURES
    attention_bias: bool = False  # q/k/v projections add a bias row (Qwen2)
    qk_norm: bool = False  # q and k of each head are RMS-normalized before rope (Qwen3)

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        family = model_family(config)
        heads = config["num_attention_heads"]
        for key in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                    "intermediate_size", "vocab_size"):  # fmt: skip
            _require_positive(config, key)
        for key in ("num_key_value_heads", "head_dim", "max_position_embeddings"):
            if config.get(key) is not None:
                _require_positive(config, key)
        scaling = config.get("rope_scaling") or (config.get("rope_parameters") or {})
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in SUPPORTED_ROPE:
            raise UserError(
                f"asks for rope scaling {kind!r}, which is not supported (supported: "
                f"{', '.join(SUPPORTED_ROPE)}): this model's positions cannot be computed."
            )
        if kind == "default":
            scaling = None
        theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
            "rope_theta", 10000.0
        )
        return cls(
            n_layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            n_heads=heads,
            n_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            ffn=config["intermediate_size"],
            vocab=config["vocab_size"],
            rms_eps=float(config.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta),
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_positions=config.get("max_position_embeddings", 2048),
            family=family,
            attention_bias=family == "qwen2",
            qk_norm=family == "qwen3",
        )

    @property
    def architecture(self) -> str:
        return next(a for a, f in SUPPORTED_ARCHITECTURES.items() if f == self.family)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelShape:
        scaling = data.get("rope_scaling")
        return cls(**{**data, "rope_scaling": tuple(sorted(scaling.items())) if scaling else None})


def model_family(config: dict[str, Any]) -> str:
    """The family (model_type) of a config whose architecture this runtime implements;
    anything else is refused naming it and the supported list, before anything is built."""
    supported = ", ".join(f"{a} ({t})" for a, t in SUPPORTED_ARCHITECTURES.items())
    names = config.get("architectures") or []
    model_type = config.get("model_type")
    # A config names its class (model_type must agree); a hand-written one may give only
    # model_type, or nothing (Llama).
    family = SUPPORTED_ARCHITECTURES.get(names[0]) if names else model_type or "llama"
    if family not in SUPPORTED_ARCHITECTURES.values() or model_type not in (family, None):
        raise UserError(
            f"names architecture {names or None} (model_type {model_type!r}), which this "
            f"runtime does not implement; supported: {supported}."
        )
    if family == "llama" and config.get("attention_bias"):
        raise UserError("sets attention_bias for a Llama model (a bias on o_proj too), "
                        f"which no ELF implements; supported: {supported}.")  # fmt: skip
    for flag in _UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise UserError(f"sets {flag}, which no ELF implements; supported: {supported} "
                            "without it.")  # fmt: skip
    return family


def tensor_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama-family checkpoint of this shape holds, by its Hugging Face
    name, with its shape (lm_head only when untied)."""
    e, q, kv, f = shape.hidden, shape.q_dim, shape.kv_dim, shape.ffn
    layer = {
        "input_layernorm.weight": (e,), "post_attention_layernorm.weight": (e,),
        "self_attn.q_proj.weight": (q, e), "self_attn.k_proj.weight": (kv, e),
        "self_attn.v_proj.weight": (kv, e), "self_attn.o_proj.weight": (e, q),
        "mlp.gate_proj.weight": (f, e), "mlp.up_proj.weight": (f, e),
        "mlp.down_proj.weight": (e, f),
    }  # fmt: skip
    if shape.attention_bias:
        layer |= {f"self_attn.{n}_proj.bias": (d,) for n, d in (("q", q), ("k", kv), ("v", kv))}
    if shape.qk_norm:
        layer |= {f"self_attn.{n}_norm.weight": (shape.head_dim,) for n in "qk"}
    shapes = {"model.embed_tokens.weight": (shape.vocab, e), "model.norm.weight": (e,)}
    if not shape.tie_embeddings:
        shapes["lm_head.weight"] = (shape.vocab, e)
    for number in range(shape.n_layers):
        shapes |= {f"model.layers.{number}.{name}": dims for name, dims in layer.items()}
    return shapes


def rope_inv_freq(shape: ModelShape) -> np.ndarray:
    """Rotary inverse frequencies, with Llama-3 frequency scaling when configured."""
    dim = shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = dict(shape.rope_scaling or ())
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "llama3":
        inv_freq = _llama3_scaled(inv_freq, scaling)
    elif kind not in (None, "default"):
        raise UserError(f"rope scaling {kind!r} is not supported (supported: {SUPPORTED_ROPE})")
    return inv_freq


def _llama3_scaled(inv_freq: np.ndarray, scaling: dict[str, Any]) -> np.ndarray:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    between = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return np.where(between, blended, scaled)


def rope_table(shape: ModelShape, n_positions: int) -> np.ndarray:
    """[positions, Dh] fp32: cos of the Dh/2 frequencies, then their sin."""
    angles = np.outer(np.arange(n_positions, dtype=np.float64), rope_inv_freq(shape))
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


# A fast tokenizer (tokenizer.json) or a SentencePiece model: one of them is needed.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_TIED = {
    "model.embed_tokens.weight": "lm_head.weight",
    "lm_head.weight": "model.embed_tokens.weight",
}
# safetensors' numpy binding has no bfloat16, so bf16 tensors are memory-mapped
# straight from the file layout (8-byte header length, JSON header, raw data).
_SAFETENSORS_DTYPES = {"BF16": BF16, "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}


@dataclass(frozen=True)
class _TensorEntry:
    file: Path
    offset: int  # of the first byte, from the start of the file
    dtype: np.dtype
    shape: tuple[int, ...]

    def read(self) -> np.ndarray:
        return np.memmap(self.file, dtype=self.dtype, mode="r", offset=self.offset,
                         shape=self.shape)  # fmt: skip


# The block types the quantized kernels read (GGUF's names).
QUANT_TYPES = ("Q4_0", "Q4_1", "Q8_0")
QUANTIZE_ROWS = 1024  # rows per call of the gguf quantizer (Checkpoint.blocks)


# The safetensors format caps its JSON header at 100 MB; a larger length is damage.
MAX_HEADER_BYTES = 100_000_000
DAMAGED = "the file is damaged or not safetensors: copy or convert the checkpoint again"


def _safetensors_entries(file: Path) -> dict[str, _TensorEntry]:
    size = file.stat().st_size
    with file.open("rb") as handle:
        prefix = handle.read(8)
        header_len = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or header_len > min(size - 8, MAX_HEADER_BYTES):
            raise UserError(
                f"{file}: its header length ({header_len} bytes) does not fit the file "
                f"({size} bytes); {DAMAGED}."
            )
        try:
            header = json.loads(handle.read(header_len))
            header.pop("__metadata__", None)
            fields = {
                name: (e["dtype"], tuple(int(d) for d in e["shape"]), *map(int, e["data_offsets"]))
                for name, e in header.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{file}: its header is not valid ({exc!r}); {DAMAGED}.") from None
    unsupported = {dtype for dtype, *_ in fields.values()} - set(_SAFETENSORS_DTYPES)
    if unsupported:
        raise UserError(f"{file} stores tensors as {sorted(unsupported)}; expected BF16/F16/F32.")
    data_bytes = size - 8 - header_len
    entries = {}
    for name, (dtype_name, shape, begin, end) in fields.items():
        dtype = _SAFETENSORS_DTYPES[dtype_name]
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise UserError(
                f"{file}: tensor {name} claims shape {list(shape)} but holds {end - begin} "
                "bytes; the file is damaged."
            )
        if not 0 <= begin <= end <= data_bytes:
            raise UserError(
                f"{file}: tensor {name} lies at bytes {begin}..{end} of a {data_bytes}-byte "
                f"data section (the file is truncated?); {DAMAGED}."
            )
        entries[name] = _TensorEntry(file, 8 + header_len + begin, dtype, shape)
    return entries


def _read_config(file: Path) -> dict[str, Any]:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{file} is not valid JSON ({exc}): fix it or copy it again.") from None
    if not isinstance(config, dict):
        raise UserError(f"{file} is not a JSON object: it is not a Hugging Face config.")
    return config


def shape_of(config_file: Path, config: dict[str, Any]) -> ModelShape:
    """The shape a config describes; what is missing or unsupported named with the file."""
    try:
        return ModelShape.from_config(config)
    except UserError as exc:
        raise UserError(f"{config_file} {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{config_file} lacks or garbles a setting a Llama-family model needs ({exc!r}): "
            "it is not a complete config of a supported family."
        ) from None


def read_shape(path: Path) -> ModelShape:
    """The shape of the model in a directory from its config.json alone (no weights, no
    tokenizer): what `doit check` needs to model a model before its weights are fetched."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} has no config.json: it is not a Hugging Face model directory.")
    return shape_of(config_file, _read_config(config_file))


class Checkpoint:
    """A checkpoint directory: config.json, *.safetensors, tokenizer files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise UserError(
                f"{self.path} is not a Hugging Face checkpoint directory (no config.json). "
                "Pass --model DIR with config.json, *.safetensors and tokenizer.json."
            )
        self.config = _read_config(config_file)
        self.shape = shape_of(config_file, self.config)
        self._index = self._index_tensors()
        self._check_tensor_shapes()
        self._tokenizer = None

    def _check_tensor_shapes(self) -> None:
        """Refuse at once, naming the file and the tensor, a checkpoint whose weights do
        not match its config (else a call deep inside a prefill would fail, or a token
        id past the embedding would be sampled)."""
        for name, shape in tensor_shapes(self.shape).items():
            entry = self._index[self._resolve_tied(name)]
            if tuple(entry.shape) != shape:
                raise UserError(
                    f"{entry.file}: tensor {name!r} is {list(entry.shape)}, but config.json "
                    f"implies {list(shape)}: the weights and the config do not belong together."
                )

    def _index_tensors(self) -> dict[str, _TensorEntry | gguf_model.GgufTensor]:
        if (self.path / gguf_model.INDEX).is_file():
            return dict(gguf_model.tensors(self.path))
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise UserError(
                f"{self.path} holds no weights: *.safetensors files, or a GGUF file passed "
                "as --model FILE.gguf"
            )
        index: dict[str, _TensorEntry] = {}
        for file in files:
            index.update(_safetensors_entries(file))
        return index

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as bf16: a read-only memory map when the file stores bf16, else
        its values (a GGUF block type dequantized) rounded to bf16."""
        array = self._index[self._resolve_tied(name)].read()
        return array if array.dtype == BF16 else np.asarray(array, np.float32).astype(BF16)

    def stored_type(self, name: str) -> str:
        """How the file stores a tensor: a GGUF type name (F32, Q4_1, ...) or, for
        safetensors, its dtype (bfloat16, float32, ...)."""
        entry = self._index[self._resolve_tied(name)]
        return entry.type if isinstance(entry, gguf_model.GgufTensor) else str(entry.dtype)

    def blocks(self, name: str, qtype: str) -> np.ndarray:
        """A weight matrix as GGUF blocks of `qtype` (Q4_0, Q4_1, Q8_0), uint8
        [rows, bytes per row]: the file's own blocks when it stores that type, else the
        tensor quantized with llama.cpp's reference numerics (the gguf package)."""
        qtype = qtype.upper()  # the build's weights= spelling is lowercase
        if qtype not in QUANT_TYPES:
            raise UserError(
                f"tensor {name!r} is wanted in type {qtype}, which the NPU kernels do not "
                f"read: requantize the model with llama.cpp to {', '.join(QUANT_TYPES)}, or "
                "compile with weights=bf16."
            )
        entry = self._index[self._resolve_tied(name)]
        if isinstance(entry, gguf_model.GgufTensor) and entry.type == qtype:
            return entry.blocks()
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        values = entry.read() if isinstance(entry, gguf_model.GgufTensor) else self.tensor(name)
        # Blocks lie along rows, so rows quantize alone: a batch at a time keeps the
        # quantizer's fp32 temporaries small (the whole Llama-3.2-1B LM head at once
        # took several GB).
        rows = values.reshape(-1, values.shape[-1])
        kind = GGMLQuantizationType[qtype]
        return np.concatenate([
            quantize(np.asarray(rows[i : i + QUANTIZE_ROWS], np.float32), kind)
            for i in range(0, len(rows), QUANTIZE_ROWS)
        ])  # fmt: skip

    def _resolve_tied(self, name: str) -> str:
        # A tied checkpoint may store the embedding under either name.
        if name not in self._index and self.shape.tie_embeddings:
            name = _TIED.get(name, name)
        if name not in self._index:
            raise UserError(
                f"checkpoint {self.path} has no tensor {name!r}; is it a Llama-family model?"
            )
        return name

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.path)
        return self._tokenizer

    @property
    def name(self) -> str:
        # A directory derived from a user's GGUF file elsewhere is named by that file.
        gguf = gguf_model.gguf_file(self.path)
        return gguf.stem if gguf is not None and gguf.parent != self.path else self.path.name

    def nonfinite_output_error(self) -> UserError:
        """Why the model computed NaN or infinite logits, naming the weight tensor that
        holds them (a full scan: only after the fact, never on every load)."""
        for name in self._index:
            if not np.isfinite(self.tensor(name).astype(np.float32)).all():
                return UserError(
                    f"the model computed NaN/infinite logits: tensor {name!r} in {self.path} "
                    "holds NaN or infinity. The checkpoint is damaged: convert or copy it again."
                )
        return UserError(
            f"the model computed NaN/infinite logits although every weight in {self.path} is "
            "finite (the activations overflowed): this checkpoint cannot run in bf16."
        )

    def stop_token_ids(self) -> set[int]:
        """EOS ids from the config, the generation config and the tokenizer."""
        ids: set[int] = set()
        for source in (self.config, self._generation_config()):
            eos = source.get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
        tok = self.tokenizer
        if tok.eos_token_id is not None:
            ids.add(tok.eos_token_id)
        for special in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
            token_id = tok.convert_tokens_to_ids(special)
            if isinstance(token_id, int) and token_id != tok.unk_token_id:
                ids.add(token_id)
        return ids

    def _generation_config(self) -> dict[str, Any]:
        file = self.path / "generation_config.json"
        if not file.is_file():
            return {}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{file} is not valid JSON ({exc}): fix it or remove it (it only "
                            "adds end-of-text ids).") from None  # fmt: skip
        if not isinstance(data, dict):
            raise UserError(f"{file} holds {type(data).__name__}, not a JSON object: fix it or "
                            "remove it.")  # fmt: skip
        return data

    def encode_prompt(self, prompt: str, chat: bool | None = None) -> list[int]:
        """Token ids for a user prompt: through the chat template when the model
        has one (instruct models), plain text with BOS otherwise."""
        use_chat = self.tokenizer.chat_template is not None if chat is None else chat
        if use_chat:
            return self.encode_chat([{"role": "user", "content": prompt}])
        return list(self.tokenizer(prompt)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """A whole conversation through the chat template, ready for the assistant."""
        if self.tokenizer.chat_template is None:
            raise UserError(f"{self.name} has no chat template: use `run` for plain text.")
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:  # a template is a program: it may raise anything
            raise UserError(
                f"the chat template of {self.path} fails on this conversation "
                f"({type(exc).__name__}: {exc}): fix `chat_template` in its "
                "tokenizer_config.json, or use a prompt without a chat template."
            ) from None
        return list(ids)


def _load_tokenizer(path: Path):
    """The checkpoint's tokenizer; transformers' many ways of failing on missing or
    broken tokenizer files become one message naming the directory."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): copy the tokenizer "
            "files of the model into it."
        )
    try:
        if (path / "tokenizer.json").is_file():  # no transformers import: seconds saved
            return FastTokenizer(path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers and tokenizers raise many types for bad files
        raise UserError(
            f"the tokenizer in {path} cannot be loaded ({type(exc).__name__}: {exc}): copy "
            "the model's tokenizer files (tokenizer.json, tokenizer_config.json) again."
        ) from None


def gguf_dir(gguf_file: Path, models_dir: Path) -> Path:
    """The model directory derived from a GGUF file (config, tokenizer, tensor index;
    the weights stay in the file), made on first use and again when the file changed."""
    target = gguf_model.derived_dir(gguf_file, models_dir)
    if gguf_model.is_current(target):
        return target
    with holding(target.parent / f".{target.name}.lock", f"the model directory of {gguf_file}"):
        if not gguf_model.is_current(target):
            with staging_dir(target) as staging:
                gguf_model.derive(gguf_file, staging)
                publish_dir(staging, target, gguf_model.is_current)
    return target


def resolve_model(model: str | None, models_dir: Path) -> Path:
    """A checkpoint directory for `--model`: None means the embedded default model
    (materialized on first use), else a directory or a Hugging Face model id that is
    already in the local Hugging Face cache (nothing is downloaded)."""
    from aierun import default_model

    if not model:
        return default_model.materialize(models_dir / default_model.NAME)
    path = Path(model).expanduser()
    gguf_file = gguf_model.find_gguf(path)
    if gguf_file is not None:
        return gguf_dir(gguf_file, models_dir)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:  # the hub client raises several types for "not cached"
        raise UserError(
            f"model {model!r} is neither a checkpoint directory nor a model id in the "
            "local Hugging Face cache (this runtime never downloads)."
        ) from exc
