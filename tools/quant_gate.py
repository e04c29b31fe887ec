"""The quantization gate: a bf16 checkpoint with its decode GEMVs' weights quantized at
compile (`weights=q4_0` etc.) against its bf16 self, both on emu, teacher-forced on the
same natural text (the prompts of aierun/data/prompts.txt, then an ordinary paragraph).

Per position after the first: is the quantized model's top-1 token among the bf16
model's top 5 (the top-5 hit rate) and is it the bf16 top-1; and the perplexity of the
text under each, whose ratio is the quantization's cost. The gate, a choice stated
here (no published figure for this model backs it): top-5 hit rate at least 90 % and a
perplexity ratio at most 1.10. A wrong block layout or scale puts both far off (random
tokens); Q8_0 is the control that should sit near 1.00.

    python -m tools.quant_gate [--weights q4_0] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import numpy as np

from aiebuild.tasks import BuildConfig, compile_all
from aierun.artifacts import ArtifactSet
from aierun.model import Checkpoint
from aierun.session import session_on

MIN_TOP5, MAX_PERPLEXITY_RATIO = 0.90, 1.10
PARAGRAPH = (
    "The library opened early on Saturday, and by nine the reading room was already "
    "full. Students spread their notes across the long tables while an old man by the "
    "window worked slowly through a newspaper. Outside, the rain had stopped, and the "
    "street was loud with delivery vans and the voices of people hurrying to the market. "
    "A librarian pushed a cart of returned books between the shelves, pausing now and then "
    "to straighten a row or to answer a quiet question about where the maps were kept."
)


def text() -> str:
    prompts = (resources.files("aierun") / "data" / "prompts.txt").read_text().split("\n")
    return " ".join(p for p in prompts if p.strip()) + " " + PARAGRAPH


def forced_logits(home: Path, model: Path, weights: str, ids: list[int]) -> np.ndarray:
    """The logits [len(ids) - 1, V] that score ids[1:], on emu with this weight type."""
    manifest = compile_all(BuildConfig(home, str(model), (64,), "emu", weights=weights))
    checkpoint = Checkpoint(model)
    with session_on("emu", checkpoint, ArtifactSet.open(manifest)) as session:
        rows = [session.prefill(ids[:1], capacity=len(ids))]
        rows += [session.decode(token) for token in ids[1:-1]]
    return np.stack(rows).astype(np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def gate(reference: np.ndarray, ours: np.ndarray, ids: list[int]) -> dict[str, float]:
    targets = np.asarray(ids[1:])
    rows = np.arange(len(targets))
    top5 = np.argsort(-reference, axis=1, kind="stable")[:, :5]
    choice = ours.argmax(axis=1)
    nll = {name: -log_softmax(values)[rows, targets].mean()
           for name, values in (("bf16", reference), ("quantized", ours))}  # fmt: skip
    return {
        "positions": len(targets),
        "top5_hit_rate": float(np.mean([c in t for c, t in zip(choice, top5, strict=True)])),
        "top1_agreement": float(np.mean(choice == top5[:, 0])),
        "perplexity_bf16": float(np.exp(nll["bf16"])),
        "perplexity_quantized": float(np.exp(nll["quantized"])),
        "perplexity_ratio": float(np.exp(nll["quantized"] - nll["bf16"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="q4_0")
    parser.add_argument("--model", type=Path, default=Path("build/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--home", type=Path, default=Path("build/quant_gate"))
    args = parser.parse_args(argv)
    ids = Checkpoint(args.model).encode_prompt(text(), chat=False)
    reference = forced_logits(args.home / "bf16", args.model, "bf16", ids)
    ours = forced_logits(args.home / args.weights, args.model, args.weights, ids)
    result = {"weights": args.weights, **gate(reference, ours, ids)}
    passed = result["top5_hit_rate"] >= MIN_TOP5 and (
        result["perplexity_ratio"] <= MAX_PERPLEXITY_RATIO
    )
    print(json.dumps({**result, "passed": passed}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
