"""`aierun verify`: the top-k gate of our tokens against Hugging Face transformers
(the layer-by-layer comparison is aierun/verify/diagnosis.py).

Both drive the production Session (the same prepare / prefill / decode calls that
`run` makes, on whichever device); there is no second forward pass written for
checking. The reference is transformers running the same checkpoint on the CPU
(aierun.verify.reference), teacher-forced on the exact token sequence we produced.

The gate is top-k, not top-1: our pipeline rounds to bf16 where the NPU does, the
reference (bf16 by default, as deployed) rounds elsewhere, so a near-tie between
two candidates may go either way. A wrong computation leaves the reference's top-k.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from aierun.errors import UserError
from aierun.session import Session, open_session
from aierun.verify import run_info, write_result
from aierun.verify.reference import Reference

log = structlog.get_logger("aierun.verify.gate")

DEFAULT_PROMPTS = resources.files("aierun") / "data" / "prompts.txt"


def load_prompts(file: str | Path | None) -> list[str]:
    """One prompt per line; blank lines are skipped. None: the built-in set."""
    source = DEFAULT_PROMPTS if file is None else Path(file).expanduser()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--prompts {file}: cannot read it ({exc.strerror}).") from exc
    except UnicodeDecodeError as exc:
        raise UserError(
            f"--prompts {file} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it "
            "as UTF-8 (e.g. `iconv -t UTF-8`)."
        ) from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts {file} holds no prompt: write one prompt per line.")
    return prompts


# -- verify ---------------------------------------------------------------------
@dataclass(frozen=True)
class PromptCheck:
    """Our greedy tokens for one prompt, scored step by step against the reference."""

    prompt: str
    k: int
    tokens: list[int]
    ranks: list[int]  # our token's rank in the reference's logits (0 = its top-1)
    logit_diffs: list[float]  # max |ours - reference| over the vocabulary, per step
    reference_topk: list[list[int]]  # the reference's k best tokens, per step

    @property
    def topk_hits(self) -> int:
        return sum(rank < self.k for rank in self.ranks)

    @property
    def first_miss(self) -> int | None:
        return next((step for step, rank in enumerate(self.ranks) if rank >= self.k), None)

    @property
    def hit_rate(self) -> float:
        return self.topk_hits / len(self.ranks)

    @property
    def top1_hits(self) -> int:
        return sum(rank == 0 for rank in self.ranks)

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": self.tokens,
            "topk_hits": self.topk_hits,
            "first_miss": self.first_miss,
            "hit_rate": self.hit_rate,
            "top1_hits": self.top1_hits,
            "ranks": self.ranks,
            "max_logit_diff": max(self.logit_diffs),
            "reference_topk": self.reference_topk,
        }


@dataclass(frozen=True)
class VerifyResult:
    k: int
    n_tokens: int
    checks: list[PromptCheck]

    @property
    def passed(self) -> bool:
        return all(check.first_miss is None for check in self.checks)

    @property
    def min_hit_rate(self) -> float:
        return min(check.hit_rate for check in self.checks)

    @property
    def top1_rate(self) -> float:
        steps = sum(len(check.ranks) for check in self.checks)
        return sum(check.top1_hits for check in self.checks) / steps

    @property
    def max_logit_diff(self) -> float:
        return max(max(check.logit_diffs) for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "pass": self.passed,
            "k": self.k,
            "n_tokens": self.n_tokens,
            "prompts": [check.to_json() for check in self.checks],
            "min_hit_rate": self.min_hit_rate,
            "top1_rate": self.top1_rate,
            "max_logit_diff": self.max_logit_diff,
        }


def greedy_steps(session: Session, ids: list[int], n_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy generation through the production loop, keeping the logits every
    choice was made from ([n_tokens, V]). It does not stop at end-of-turn, so
    every prompt checks exactly n_tokens steps."""
    seen: list[np.ndarray] = []
    tokens = list(session.generate(ids, n_tokens, stop_ids=set(), on_logits=seen.append))
    return tokens, np.stack(seen)


def check_prompt(
    session: Session, reference: Reference, prompt: str, n_tokens: int, k: int
) -> PromptCheck:
    ids = session.checkpoint.encode_prompt(prompt)
    tokens, ours = greedy_steps(session, ids, n_tokens)
    # Teacher-forced on our sequence: position len(ids)-1+i scores our token i.
    # The last token is never fed back, so the reference does not need it either.
    theirs = reference.run(ids + tokens[:-1]).logits[len(ids) - 1 :]
    chosen = theirs[np.arange(n_tokens), tokens]
    # Tokens the reference scores strictly higher: ties (common in bf16) count as hits.
    ranks = np.count_nonzero(theirs > chosen[:, None], axis=1)
    return PromptCheck(
        prompt=prompt,
        k=k,
        tokens=tokens,
        ranks=[int(rank) for rank in ranks],
        logit_diffs=[float(diff) for diff in np.abs(ours - theirs).max(axis=1)],
        reference_topk=np.argsort(-theirs, axis=1, kind="stable")[:, :k].tolist(),
    )


def check_counts(n_tokens: int, k: int) -> None:
    if n_tokens < 1 or k < 1:
        raise UserError(f"--n-tokens ({n_tokens}) and --k ({k}) must be at least 1")


def verify(
    session: Session, reference: Reference, prompts: list[str], n_tokens: int, k: int
) -> VerifyResult:
    check_counts(n_tokens, k)
    checks = []
    for prompt in prompts:
        check = check_prompt(session, reference, prompt, n_tokens, k)
        log.info(
            "verify.prompt",
            prompt=prompt,
            topk_hits=check.topk_hits,
            top1_hits=check.top1_hits,
            first_miss=check.first_miss,
        )
        checks.append(check)
    return VerifyResult(k, n_tokens, checks)


def cmd_verify(args: argparse.Namespace) -> int:
    prompts = load_prompts(args.prompts)
    check_counts(args.n_tokens, args.k)  # before seconds of loading
    with open_session(args) as session:
        reference = Reference(session.checkpoint.path, args.reference_dtype)
        result = verify(session, reference, prompts, args.n_tokens, args.k)
    tokenizer, stop_ids = session.checkpoint.tokenizer, session.checkpoint.stop_token_ids()
    for number, check in enumerate(result.checks, 1):
        print(_describe_check(number, len(result.checks), check, tokenizer, stop_ids))
    print(
        f"[verify] {len(result.checks)} prompts x {result.n_tokens} tokens: min top-{result.k} "
        f"hit rate {result.min_hit_rate:.1%}, top-1 agreement {result.top1_rate:.1%}, "
        f"largest logit difference {result.max_logit_diff:.3f}"
    )
    print("[verify] PASS" if result.passed else "[verify] FAIL")
    log.info(
        "verify.result",
        passed=result.passed,
        min_hit_rate=result.min_hit_rate,
        top1_rate=round(result.top1_rate, 4),
        max_logit_diff=result.max_logit_diff,
    )
    if args.json:
        write_result(args.json, run_info(args, session) | result.to_json())
    return 0 if result.passed else 1


def _describe_check(
    number: int, total: int, check: PromptCheck, tokenizer, stop_ids: set[int]
) -> str:
    steps = len(check.ranks)
    lines = [
        f"[verify] prompt {number}/{total} {check.prompt!r}: {check.topk_hits}/{steps} in "
        f"top-{check.k}, top-1 {check.top1_hits}/{steps}, "
        f"max logit diff {max(check.logit_diffs):.3f}",
        f"    ours: {_answer(check.tokens, tokenizer, stop_ids)}",
    ]
    miss = check.first_miss
    if miss is not None:
        expected = [tokenizer.decode([token]) for token in check.reference_topk[miss]]
        lines.append(
            f"    first miss at step {miss}: ours {tokenizer.decode([check.tokens[miss]])!r} "
            f"(reference rank {check.ranks[miss]}), reference top-{check.k} {expected}"
        )
    return "\n".join(lines)


def _answer(tokens: list[int], tokenizer, stop_ids: set[int]) -> str:
    """The answer as a user would see it: up to its end of turn. The gate checks every
    step (greedy_steps does not stop), so the steps after it are counted, not shown."""
    end = next((i for i, token in enumerate(tokens) if token in stop_ids), len(tokens))
    text = repr(tokenizer.decode(tokens[:end]))
    if end < len(tokens):
        text += f" (end of turn; {len(tokens) - end - 1} more steps past it checked too)"
    return text
