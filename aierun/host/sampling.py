"""Choosing the next token from the logits (the CPU op `sample`): greedy, or
temperature and nucleus (top-p) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aierun.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0 (the default: reproducible)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserError(
                f"--temperature must be >= 0 and --top-p in (0, 1]; got {self.temperature} "
                f"and {self.top_p}"
            )
        if self.seed < 0:  # numpy's generators take non-negative seeds only
            raise UserError(f"--seed must be 0 or more, got {self.seed}")


GREEDY = Sampling()


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    # In fp64: a tiny temperature then drives the others' exps to 0, never 0/0 = NaN
    # (an fp32 division by 1e-300 would divide by a zero).
    wide = logits.astype(np.float64)
    probs = np.exp((wide - wide.max()) / sampling.temperature)
    probs /= probs.sum()
    order = np.argsort(-probs)
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
    return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))
