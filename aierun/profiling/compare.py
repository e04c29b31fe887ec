"""`aierun profile --compare A.json B.json`: two profiled runs side by side (before and
after a change, bucket 64 against 2048, emu against another device), read from the
profile JSON each run wrote (`profile_json.to_json`). Per step: A, B, the difference and
the ratio, largest change first, with the npu2 model of each; then TTFT, TPOT and the
modeled totals. Runs of different models compare where their steps match, and the
report says which steps do not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from aierun.errors import UserError
from aierun.profiling.charts import UNTIMED, compare_chart
from aierun.profiling.html import cards_html, page, section_html
from aierun.profiling.profile_json import PROFILE_SCHEMA
from aierun.profiling.text import Section, Table, ms, render_sections

# What the comparison reads from each file, and so what a profile JSON must have.
REQUIRED = {
    "": ("schema", "device", "model", "prompt_tokens", "seq_len", "decode_tokens", "ttft_ms",
         "tpot_ms", "prepare_ms", "prefill", "decode", "kernels", "cpu_ops", "npu2_model"),
    "prefill": ("kernel_ms", "cpu_ms", "unattributed_ms"),
    "decode": ("kernel_ms_per_token", "cpu_ms_per_token", "unattributed_ms_per_token"),
    "npu2_model": ("ttft_ms", "tpot_ms", "per_elf"),
}  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One profile JSON."""

    path: Path
    data: dict[str, Any]

    @property
    def label(self) -> str:
        d = self.data
        # Other processes on the host slow a run down: its load says how busy it was.
        load = d.get("host_load_avg")
        busy = f", host load {load:.2f}" if load is not None else ""
        return (f"{d['model']} on {d['device']}, {d['prompt_tokens']} prompt tokens in bucket "
                f"{d['seq_len']}, {d['decode_tokens']} decode steps{busy}")  # fmt: skip

    def steps(self) -> dict[str, float]:
        """ms of each "<phase>/<step>": the prefill's total, a decode step's mean."""
        tokens = self.data["decode_tokens"]
        out = {}
        for key, entry in (*self.data["kernels"].items(), *self.data["cpu_ops"].items()):
            decode = key.startswith("decode/")
            out[key] = entry["total_ms"] / tokens if decode else entry["total_ms"]
        out[f"prefill/{UNTIMED}"] = self.data["prefill"]["unattributed_ms"]
        if tokens:
            out[f"decode/{UNTIMED}"] = self.data["decode"]["unattributed_ms_per_token"]
        return out

    def npu2(self, step: str) -> float | None:
        return self.data["npu2_model"]["per_elf"].get(step)


def load_run(path: Path) -> Run:
    """The profile JSON at `path`, or one UserError naming the file and what was wrong."""
    expected = ("Pass the .json that `aierun profile` writes (build/profiles/profile-<time>.json "
                "under doit), not its .trace.json or .html.")  # fmt: skip
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(
            f"cannot read the profile {path}: {exc.strerror or exc}. {expected}"
        ) from exc
    except ValueError as exc:  # not JSON, or not UTF-8 text
        raise UserError(
            f"{path} is not a profile JSON: it is not JSON ({exc}). {expected}"
        ) from exc
    if isinstance(data, dict) and "traceEvents" in data:
        raise UserError(f"{path} is a Perfetto trace, not a profile JSON. {expected}")
    if not isinstance(data, dict) or data.get("schema") is None:
        raise UserError(f'{path} is not a profile JSON: no "schema" key. {expected}')
    if data["schema"] != PROFILE_SCHEMA:
        raise UserError(
            f"{path} is a profile JSON of schema {data['schema']}; this aierun reads schema "
            f"{PROFILE_SCHEMA}. Profile that run again with this aierun."
        )
    for part, keys in REQUIRED.items():
        where = data[part] if part else data
        missing = [k for k in keys if not isinstance(where, dict) or k not in where]
        if missing:
            inside = f" in its {part!r}" if part else ""
            raise UserError(f"{path} is not a whole profile JSON: {', '.join(missing)} missing"
                            f"{inside}. {expected}")  # fmt: skip
    return Run(path, data)


@dataclass(frozen=True)
class Comparison:
    a: Run
    b: Run

    def matched(self) -> list[tuple[str, float, float]]:
        """(step, A ms, B ms) of the steps both runs have, largest change first."""
        a, b = self.a.steps(), self.b.steps()
        rows = [(step, a[step], b[step]) for step in a if step in b]
        return sorted(rows, key=lambda r: abs(r[2] - r[1]), reverse=True)

    def unmatched(self) -> tuple[list[str], list[str]]:
        a, b = self.a.steps(), self.b.steps()
        return [s for s in a if s not in b], [s for s in b if s not in a]

    def mismatches(self) -> list[str]:
        """What differs between the two runs besides their times."""
        notes = []
        for key, what in (("model", "models"), ("device", "devices"), ("seq_len", "buckets"),
                          ("prompt_tokens", "prompt lengths")):  # fmt: skip
            if self.a.data[key] != self.b.data[key]:
                notes.append(f"different {what}: A {self.a.data[key]}, B {self.b.data[key]}")
        only_a, only_b = self.unmatched()
        if only_a or only_b:
            notes.append(
                "steps are compared where both runs have them; only in A: "
                f"{', '.join(only_a) or 'none'}; only in B: {', '.join(only_b) or 'none'}"
            )
        return notes


def diff(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{b - a:+.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or a == 0 else f"{b / a:.2f}x"


def largest_change(comparison: Comparison) -> str:
    a, b = comparison.a.data, comparison.b.data
    parts = [f"TTFT {ms(a['ttft_ms'], 1)} -> {ms(b['ttft_ms'], 1)} ms "
             f"({ratio(a['ttft_ms'], b['ttft_ms'])})"]  # fmt: skip
    if a["tpot_ms"] and b["tpot_ms"]:
        parts.append(f"TPOT {ms(a['tpot_ms'], 1)} -> {ms(b['tpot_ms'], 1)} ms "
                     f"({ratio(a['tpot_ms'], b['tpot_ms'])})")  # fmt: skip
    matched = comparison.matched()
    if matched:
        step, x, y = matched[0]
        parts.insert(0, f"largest change: {step}, {ms(x, 1)} -> {ms(y, 1)} ms "
                        f"({diff(x, y)} ms, {ratio(x, y)})")  # fmt: skip
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def sections(comparison: Comparison) -> list[Section]:
    a, b = comparison.a, comparison.b

    def row(label: str, x: float | None, y: float | None) -> tuple[str, ...]:
        return (label, ms(x), ms(y), diff(x, y), ratio(x, y))

    def at(run: Run, *keys: str) -> float | None:
        value: Any = run.data
        for key in keys:
            value = value[key]
        return value

    totals = [
        ("TTFT (prefill wall) ms", ("ttft_ms",)),
        ("TPOT (decode step wall) ms", ("tpot_ms",)),
        ("prepare (one-time) ms", ("prepare_ms",)),
        ("prefill kernel ms", ("prefill", "kernel_ms")),
        ("prefill CPU ms", ("prefill", "cpu_ms")),
        ("prefill untimed ms", ("prefill", "unattributed_ms")),
        ("decode kernel ms/step", ("decode", "kernel_ms_per_token")),
        ("decode CPU ms/step", ("decode", "cpu_ms_per_token")),
        ("decode untimed ms/step", ("decode", "unattributed_ms_per_token")),
        ("npu2 model TTFT (kernels) ms", ("npu2_model", "ttft_ms")),
        ("npu2 model TPOT (kernels) ms", ("npu2_model", "tpot_ms")),
    ]
    total_rows = [row(label, at(a, *keys), at(b, *keys)) for label, keys in totals]
    step_rows = [(*row(step, x, y), ms(a.npu2(step)), ms(b.npu2(step)))
                 for step, x, y in comparison.matched()]  # fmt: skip
    columns = ("", "A", "B", "B - A", "B / A")
    notes = [
        "Prefill rows are the phase's total ms, decode rows ms per decode step; untimed is "
        "a phase's wall that no kernel or CPU timer covers. npu2 model: the modeled kernel "
        "time of the same calls on a Strix NPU (kernels only; n/a for CPU steps).",
        *comparison.mismatches(),
    ]
    return [
        Section("TTFT / TPOT", [Table(columns, total_rows)]),
        Section(
            "PER STEP, LARGEST CHANGE FIRST",
            [Table(("step", *columns[1:], "A npu2 model", "B npu2 model"), step_rows)],
            notes,
        ),
    ]


def headline(comparison: Comparison) -> list[str]:
    return [f"A: {comparison.a.path}: {comparison.a.label}",
            f"B: {comparison.b.path}: {comparison.b.label}"]  # fmt: skip


def render_text(comparison: Comparison) -> str:
    lead = ["aierun profile --compare", *headline(comparison), largest_change(comparison)]
    return render_sections(lead, sections(comparison))


def render_html(comparison: Comparison) -> str:
    a, b = comparison.a.data, comparison.b.data
    title = f"aierun profile comparison: {a['model']} / {b['model']}"
    cards = [
        ("TTFT, A -> B", f"{ms(a['ttft_ms'], 1)} -> {ms(b['ttft_ms'], 1)} ms",
         ratio(a["ttft_ms"], b["ttft_ms"])),
        ("TPOT, A -> B", f"{ms(a['tpot_ms'], 1)} -> {ms(b['tpot_ms'], 1)} ms",
         ratio(a["tpot_ms"], b["tpot_ms"])),
    ]  # fmt: skip
    body = [
        f"<h1>{escape(title)}</h1>",
        *(f'<p class="note">{escape(line)}</p>' for line in headline(comparison)),
        f'<p class="lead">{escape(largest_change(comparison))}</p>',
        *(f'<p class="note"><b>Note:</b> {escape(n)}</p>' for n in comparison.mismatches()),
        cards_html(cards),
        "<h2>Per step, A against B</h2>",
        compare_chart(comparison.matched(), comparison.a.label, comparison.b.label),
        *(section_html(s) for s in sections(comparison)),
    ]
    return page(title, body)
