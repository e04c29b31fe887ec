"""The seed's measured times, the reference every profile is read against: one data
file (aierun/data/seed_profile.json) that the report and tools/calibrate.py both read,
so the numbers are written in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class SeedProfile:
    source: str  # where the numbers were measured
    model: str
    device: str
    seq_len: int
    n_layers: int
    elf_ms: dict[str, float]  # one call, by ELF name
    prefill_kernel_ms: float
    decode_kernel_ms_per_token: float
    ttft_ms: float
    tpot_ms: float

    @property
    def label(self) -> str:
        return f"seed: {self.model} on {self.device}, seq_len {self.seq_len}"


@cache
def seed_profile() -> SeedProfile:
    data = json.loads((resources.files("aierun") / "data" / "seed_profile.json").read_text())
    return SeedProfile(
        data["source"], data["model"], data["device"], data["seq_len"], data["n_layers"],
        data["elf_ms_per_call"], data["prefill_kernel_ms"], data["decode_kernel_ms_per_token"],
        data["ttft_ms"], data["tpot_ms"],
    )  # fmt: skip
