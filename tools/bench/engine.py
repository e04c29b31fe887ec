"""One engine, one model, in a process of its own (so that its peak RSS is its own):
prefill a prompt of given token ids, then decode greedily; prints one JSON object.

    python -m tools.bench.engine emu|hf-bf16|hf-fp32 MODEL_DIR --prompt-tokens N \\
        --decode-tokens M [--manifest PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from aierun import gguf_model, logs
from aierun.model import Checkpoint

clock = time.perf_counter


def prompt_ids(checkpoint: Checkpoint, n: int) -> list[int]:
    """n token ids of English text (a sentence repeated), the same for every engine."""
    sentence = checkpoint.tokenizer("Photosynthesis turns light, water and air into sugar. ")
    ids = list(sentence["input_ids"])
    return (ids * (n // len(ids) + 1))[:n]


def peak_rss_mb() -> float:
    """This process's high-water resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_emu(checkpoint: Checkpoint, manifest: Path, ids: list[int], decode: int) -> dict:
    from aierun.artifacts import ArtifactSet
    from aierun.devices.emu import EmuDevice
    from aierun.session import Session

    session = Session(checkpoint, ArtifactSet.open(manifest), EmuDevice())
    start = clock()
    session.prepare()
    prepared = clock()
    logits = session.prefill(ids, capacity=len(ids) + decode)
    ttft = clock() - prepared
    steps = []
    for _ in range(decode):
        start_step = clock()
        logits = session.decode(int(np.argmax(logits)))
        steps.append(clock() - start_step)
    layers = [
        s.dur_s * 1e3 for s in session.profiler.spans if s.phase == "prefill" and s.name == "layer"
    ]
    return {
        "prepare_s": prepared - start,
        "prefill_ms": ttft * 1e3,
        "decode_ms": [s * 1e3 for s in steps],
        "prefill_layer_ms": layers,
    }


def run_hf(checkpoint: Checkpoint, dtype_name: str, ids: list[int], decode: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    start = clock()
    location, options = gguf_model.transformers_location(checkpoint.path)
    model = AutoModelForCausalLM.from_pretrained(
        location, **options, dtype=dtype, attn_implementation="eager"
    ).eval()
    loaded = clock()
    with torch.inference_mode():
        out = model(torch.tensor([ids]), use_cache=True)
        ttft = clock() - loaded
        steps = []
        for _ in range(decode):
            start_step = clock()
            token = out.logits[0, -1].argmax().reshape(1, 1)
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
            steps.append(clock() - start_step)
    return {
        "prepare_s": loaded - start,
        "prefill_ms": ttft * 1e3,
        "decode_ms": [s * 1e3 for s in steps],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=("emu", "hf-bf16", "hf-fp32"))
    parser.add_argument("model", type=Path)
    parser.add_argument("--prompt-tokens", type=int, required=True)
    parser.add_argument("--decode-tokens", type=int, required=True)
    parser.add_argument("--manifest", type=Path, help="emu artifacts (the emu engine)")
    args = parser.parse_args()
    logs.configure(None)  # events on stderr: stdout carries the one JSON result
    checkpoint = Checkpoint(args.model)
    ids = prompt_ids(checkpoint, args.prompt_tokens)
    if args.engine == "emu":
        result = run_emu(checkpoint, args.manifest, ids, args.decode_tokens)
    else:
        result = run_hf(checkpoint, args.engine.removeprefix("hf-"), ids, args.decode_tokens)
    result["tpot_ms"] = statistics.median(result["decode_ms"])
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
