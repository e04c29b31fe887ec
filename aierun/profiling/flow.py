"""The dataflow of one prefill and one decode step, as the report walks it
(docs/design.md section 4): the host's steps and the ELFs, in order, each named once
here (the host steps) or in the ABI (the ELFs); the Session times its steps under these
names."""

from __future__ import annotations

from dataclasses import dataclass

from aierun.abi import (
    FLASH_ATTN,
    LM_HEAD_GEMV,
    O_FFN,
    O_GEMV_FFN,
    RMS_GEMMS_ROPE,
    RMS_GEMV_ROPE,
)


@dataclass(frozen=True)
class Step:
    """One box of the dataflow: a CPU op or an ELF, by name. A side-branch step
    consumes the outputs of main step `branch_of`, and nothing on the main path
    consumes its result."""

    kind: str  # "cpu" or "kernel"
    name: str
    branch_of: str | None = None


@dataclass(frozen=True)
class Flow:
    phase: str
    head: tuple[Step, ...]
    layer: tuple[Step, ...]
    tail: tuple[Step, ...]

    @property
    def steps(self) -> tuple[Step, ...]:
        return (*self.head, *self.layer, *self.tail)


# The host's steps, by the names the Session times them under (`Profiler.cpu`).
TOKENIZE, EOS_PAD, EMBED_LOOKUP = "tokenize", "eos_pad", "embed_lookup"
KV_CACHE_EXTRACT = "kv_cache_extract"  # keeping the K/V cache the prefill's kv_store wrote
# appending the position's K/V to the device's cache, writing the attention's query rows
KV_APPEND = "kv_append"
FINAL_RMS_NORM, SAMPLE = "final_rms_norm", "sample"


def _cpu(name: str, branch_of: str | None = None) -> Step:
    return Step("cpu", name, branch_of)


def _elf(name: str) -> Step:
    return Step("kernel", name)


TAIL = (_cpu(FINAL_RMS_NORM), _elf(LM_HEAD_GEMV), _cpu(SAMPLE))
PREFILL_FLOW = Flow(
    "prefill",
    (_cpu(TOKENIZE), _cpu(EOS_PAD), _cpu(EMBED_LOOKUP)),
    (_elf(RMS_GEMMS_ROPE), _elf(FLASH_ATTN), _elf(O_FFN),
     _cpu(KV_CACHE_EXTRACT, branch_of=RMS_GEMMS_ROPE)),
    TAIL,
)  # fmt: skip
DECODE_FLOW = Flow(
    "decode",
    (_cpu(EMBED_LOOKUP),),
    (_elf(RMS_GEMV_ROPE), _cpu(KV_APPEND), _elf(O_GEMV_FFN)),
    TAIL,
)
