"""The profile report as JSON (docs/design.md section 14): what `aierun profile --json`
writes and `doit profile` leaves under build/profiles/."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aierun.profiling.report import SEGMENTS, Report
from aierun.profiling.roofline import NPU2_RATES, Rates

PROFILE_SCHEMA = 1


def to_json(report: Report) -> dict[str, Any]:
    info, pre, dec = report.info, report.prefill, report.decode
    steps = dec.token_steps()
    return {
        "schema": PROFILE_SCHEMA,
        "device": info.device,
        "model": info.model,
        "prompt_tokens": info.prompt_tokens,
        "seq_len": info.seq_len,
        "decode_tokens": dec.steps,  # decode steps measured, each produced one token
        "generated_tokens": info.generated_tokens,
        "ttft_ms": report.ttft_ms,
        "tpot_ms": report.tpot_ms,
        "prepare_ms": report.prepare_ms,
        "host_load_avg": info.load_avg,
        "prefill": {
            "wall_ms": pre.wall_ms,
            "kernel_ms": pre.kernel_ms,
            "cpu_ms": pre.cpu_ms,
            "unattributed_ms": pre.unattributed_ms,
            "kernel_calls": len(pre.kernels),
            "cpu_ops": len(pre.cpu_ops),
            "layer_loop_ms": pre.loop_ms,
            "layer_loop_untimed_ms": pre.loop_untimed_ms,
            "per_layer_ms": [pre.layer_walls(i).total_ms for i in range(info.n_layers)],
        },
        "decode": {
            "wall_ms_per_token": dec.per_step(dec.wall_ms),
            "kernel_ms_per_token": dec.per_step(dec.kernel_ms),
            "cpu_ms_per_token": dec.per_step(dec.cpu_ms),
            "unattributed_ms_per_token": dec.per_step(dec.unattributed_ms),
            "kernel_calls_per_token": dec.per_step(len(dec.kernels)),
            "layer_loop_ms_per_token": dec.per_step(dec.loop_ms),
            "per_token_ms": [s.wall_ms for s in steps],
            "per_token_layer_loop_ms": [s.loop_ms for s in steps],
            "per_token_position": [s.position for s in steps],
        },
        "kernels": _kernels_json(report),
        "cpu_ops": {
            f"{phase.name}/{name}": {"count": s.count, "avg_ms": s.avg_ms, "total_ms": s.total_ms}
            for phase in report.phases
            for name in dict.fromkeys(c.name for c in phase.cpu_ops)
            for s in [phase.cpu_stats(name)]
        },
        "roofline": {"rates": _rates_json(report.rates), "npu2_rates": _rates_json(NPU2_RATES)},
        "npu2_model": npu2_model_json(report),
    }


def npu2_model_json(report: Report) -> dict[str, Any]:
    """The modeled npu2 kernel time of this run (each ELF's modeled call times the
    calls the run made of it): per ELF summed over the prefill, or per decode token;
    ttft_ms and tpot_ms are their sums. None where an ELF has no model. (The kernels'
    `npu2_model_ms` is one call.)"""
    names = _elf_keys(report)
    per_elf = {names[id(e)]: report.npu2_run_ms(e) for e in report.elfs}

    def total(phase: str) -> float | None:
        parts = [per_elf[names[id(e)]] for e in report.elfs_of(phase)]
        return None if not parts or None in parts else sum(parts)

    return {"ttft_ms": total("prefill"), "tpot_ms": total("decode"), "per_elf": per_elf}


def _elf_keys(report: Report) -> dict[int, str]:
    """Each ELF's "<phase>/<ELF name>" key; the instance (bucket) only when a phase ran
    several."""
    names = Counter((e.phase, e.spec.name) for e in report.elfs)
    return {
        id(e): f"{e.phase}/{e.spec.name if names[(e.phase, e.spec.name)] == 1 else e.spec.instance}"
        for e in report.elfs
    }


def _kernels_json(report: Report) -> dict[str, Any]:
    """Keyed "<phase>/<ELF name>"; the instance (bucket) only when a phase ran several."""
    keys, out = _elf_keys(report), {}
    for elf in report.elfs:
        s = elf.stats
        out[keys[id(elf)]] = {
            "instance": elf.spec.instance,
            "launches": len(elf.spec.launches),
            "count": s.count,
            "avg_ms": s.avg_ms,
            "min_ms": s.min_ms,
            "max_ms": s.max_ms,
            "total_ms": s.total_ms,
            # per call, like avg_ms: write + run + read = avg_ms
            **{f"{seg[:-2]}_ms": elf.segment_ms(seg) for seg in SEGMENTS},
            "bytes_written": elf.bytes_written_per_call,  # per call
            "flops": elf.cost.flops,  # per call, from the ABI
            "bytes_moved": elf.cost.bytes,
            "floor_ms": elf.floor_ms(report.rates),
            "npu2_floor_ms": elf.floor_ms(NPU2_RATES),
            "bound": report.rates.bound(elf.cost),
            "npu2_model_ms": report.npu2_model_ms.get(elf.spec.instance),
        }
    return out


def _rates_json(rates: Rates) -> dict[str, Any]:
    return {"device": rates.device, "gflops": rates.flops_per_s / 1e9,
            "gbps": rates.bytes_per_s / 1e9, "source": rates.source}  # fmt: skip
