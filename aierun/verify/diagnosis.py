"""`aierun diagnosis`: our hidden state after each prefill layer against the
transformers reference's, to find the first layer that goes wrong."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from aierun.session import Session, open_session
from aierun.verify import run_info, write_result
from aierun.verify.reference import Reference

log = structlog.get_logger("aierun.verify.diagnosis")


@dataclass(frozen=True)
class LayerDiff:
    """Our hidden state after one layer vs the reference's, over all prompt positions."""

    layer: int
    cosine_min: float  # the worst position: one broken row must not hide in an average
    cosine_mean: float
    max_abs_diff: float
    reference_max_abs: float  # the scale max_abs_diff is to be read against


@dataclass(frozen=True)
class Diagnosis:
    prompt: str
    n_positions: int
    threshold: float
    layers: list[LayerDiff]

    @property
    def first_bad_layer(self) -> int | None:
        return next((d.layer for d in self.layers if d.cosine_min < self.threshold), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "n_positions": self.n_positions,
            "threshold": self.threshold,
            "first_bad_layer": self.first_bad_layer,
            "layers": [vars(diff) for diff in self.layers],
        }


def compare_layer(layer: int, ours: np.ndarray, theirs: np.ndarray) -> LayerDiff:
    ours = ours.astype(np.float32)
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    cosines = (ours * theirs).sum(axis=1) / np.maximum(norms, np.finfo(np.float32).tiny)
    return LayerDiff(
        layer=layer,
        cosine_min=float(cosines.min()),
        cosine_mean=float(cosines.mean()),
        max_abs_diff=float(np.abs(ours - theirs).max()),
        reference_max_abs=float(np.abs(theirs).max()),
    )


def diagnose(session: Session, reference: Reference, prompt: str, threshold: float) -> Diagnosis:
    ids = session.checkpoint.encode_prompt(prompt)
    ours: list[np.ndarray] = []
    session.prefill(ids, on_layer=lambda layer, hidden: ours.append(hidden))
    theirs = reference.run(ids, hidden=True).hidden
    pairs = enumerate(zip(ours, theirs, strict=True))
    layers = [compare_layer(layer, mine, ref) for layer, (mine, ref) in pairs]
    return Diagnosis(prompt, len(ids), threshold, layers)


def cmd_diagnosis(args: argparse.Namespace) -> int:
    with open_session(args) as session:
        reference = Reference(session.checkpoint.path, args.reference_dtype)
        diagnosis = diagnose(session, reference, args.prompt, args.threshold)
    print(_diagnosis_table(diagnosis))
    bad = diagnosis.first_bad_layer
    if bad is None:
        worst = min(diagnosis.layers, key=lambda diff: diff.cosine_min)
        print(
            f"[diagnosis] every layer has cosine >= {diagnosis.threshold} "
            f"(lowest {worst.cosine_min:.5f}, layer {worst.layer})"
        )
    else:
        print(
            f"[diagnosis] first layer below cosine {diagnosis.threshold}: layer {bad} "
            f"(cosine {diagnosis.layers[bad].cosine_min:.5f})"
        )
    log.info("diagnosis.result", first_bad_layer=bad, threshold=diagnosis.threshold)
    if args.json:
        write_result(args.json, run_info(args, session) | diagnosis.to_json())
    return 0 if bad is None else 1


def _diagnosis_table(diagnosis: Diagnosis) -> str:
    rows = [
        f"[diagnosis] {diagnosis.prompt!r}: {diagnosis.n_positions} positions, hidden state "
        "after each layer vs the reference (cosine per position)",
        f"{'layer':>5}  {'cos min':>9}  {'cos mean':>9}  {'max |diff|':>10}  {'ref max':>9}",
    ]
    for d in diagnosis.layers:
        mark = "  <" if d.cosine_min < diagnosis.threshold else ""
        rows.append(
            f"{d.layer:>5}  {d.cosine_min:>9.5f}  {d.cosine_mean:>9.5f}  "
            f"{d.max_abs_diff:>10.4f}  {d.reference_max_abs:>9.3f}{mark}"
        )
    return "\n".join(rows)
