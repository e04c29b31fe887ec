"""The per-step report of one profiled run as text, in the sections and order of the
seed's report: what the always-on profiler recorded, grouped by
`aierun.profiling.report`. The same tables render as HTML in `aierun.profiling.html`;
the JSON and the trace are `profile_json` and `trace`; `aierun.profiling.command` runs
and writes them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from aierun.profiling.flow import DECODE_FLOW, PREFILL_FLOW, Flow, Step
from aierun.profiling.report import SEGMENTS, Report, beats_floor
from aierun.profiling.roofline import NPU2_RATES, rates_cache

NO_TIMER = "—"  # the seed's tag for rows no kernel or CPU timer covers


# -- the report as tables (rendered as text here, as HTML in profiling/html.py) --------
@dataclass
class Table:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    title: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    title: str
    tables: list[Table]
    notes: list[str] = field(default_factory=list)


def ms(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "n/a"


def is_number(cell: object) -> bool:
    """Numbers (and "12.3 (4%)", "+1.2%", "3.0x", "n/a" for a missing one) are
    right-aligned in tables."""
    text = str(cell).lstrip("+-")
    return text[:1].isdigit() or text == "n/a"


def sections(report: Report) -> list[Section]:
    """The report, in the seed's order."""
    return [
        dataflow_section(report),
        attribution_section(report),
        per_layer_section(report),
        kernel_section(report),
        cpu_section(report),
        fine_grained_section(report),
        trend_section(report),
        latency_section(report),
    ]


def step_tag(report: Report, step: Step) -> str:
    return "CPU" if step.kind == "cpu" else report.info.tag


def _flow_rows(report: Report, flow: Flow) -> list[tuple[Any, ...]]:
    """Tagged rows in dataflow order that add up to the phase's wall (per decode
    step for decode): every timed step, the untimed remainder inside and outside
    the layer loop, and anything recorded that the flow does not name."""
    phase = report.phase(flow.phase)
    per = phase.per_step

    def row(step: Step, indent: str = "") -> tuple[Any, ...]:
        stats = phase.step_stats(step)
        label = indent + step.name + (" (side branch)" if step.branch_of else "")
        count = f"{per(stats.count):g}"
        return (step_tag(report, step), label, count, ms(stats.avg_ms), ms(per(stats.total_ms)))

    def untimed(label: str, value: float) -> tuple[Any, ...]:
        return (NO_TIMER, label, "", "", ms(per(value)))

    rows = [row(s) for s in flow.head]
    rows.append(untimed(f"{report.info.n_layers} x decoder layer (loop envelope)", phase.loop_ms))
    rows += [row(s, "  ") for s in flow.layer]
    rows.append(untimed("  untimed inside the layer loop", phase.loop_untimed_ms))
    rows += [row(s) for s in flow.tail]
    named = sum(phase.step_stats(s).total_ms for s in flow.steps)
    other = phase.kernel_ms + phase.cpu_ms - named
    if other > 1e-6:
        rows.append(untimed("other recorded kernel/CPU time", other))
    rows.append(untimed("untimed outside the layer loop",
                        phase.unattributed_ms - phase.loop_untimed_ms))  # fmt: skip
    return rows


def dataflow_section(report: Report) -> Section:
    info, decode = report.info, report.decode
    prefill_rows = _flow_rows(report, PREFILL_FLOW)
    prefill_rows.append(("=", "TTFT (prefill wall)", "", "", ms(report.ttft_ms)))
    tables = [
        Table(
            ("where", "step", "calls", "ms/call", "ms"), prefill_rows,
            f"Prefill: prompt -> first token ({info.prompt_tokens} prompt tokens, "
            f"bucket {info.seq_len})",
        )
    ]  # fmt: skip
    if decode.steps:
        decode_rows = _flow_rows(report, DECODE_FLOW)
        decode_rows.append(("=", "TPOT (decode step wall)", "", "", ms(report.tpot_ms)))
        tables.append(
            Table(
                ("where", "step", "calls/step", "ms/call", "ms/step"), decode_rows,
                f"Decode: one step, the mean over {decode.steps} steps",
            )
        )  # fmt: skip
    notes = [
        f"Preprocessing (one-time prepare: load the tokenizer and the artifacts, write the "
        f"weights into static buffers): {ms(report.prepare_ms)} ms; not part of TTFT.",
        f"{info.tag} rows are device calls (write + run + read); CPU rows are host ops; "
        f"{NO_TIMER} rows are time under no timer. The rows add up to the = line (the loop "
        "envelope row only frames the indented rows it contains).",
    ]
    if not decode.steps:
        notes.append("No decode step ran: generation stopped at the first token.")
    return Section("END-TO-END DATAFLOW", tables, notes)


def attribution_section(report: Report) -> Section:
    pre, dec = report.prefill, report.decode
    per = dec.per_step

    def row(label: str, pre_ms: float, dec_ms: float, pre_n: Any = "", dec_n: Any = "") -> tuple:
        return (label, pre_n, ms(pre_ms), share(pre_ms, pre.wall_ms),
                dec_n, ms(per(dec_ms)), share(dec_ms, dec.wall_ms))  # fmt: skip

    rows = [
        row("kernel calls", pre.kernel_ms, dec.kernel_ms,
            len(pre.kernels), f"{per(len(dec.kernels)):g}"),
        row("CPU ops", pre.cpu_ms, dec.cpu_ms, len(pre.cpu_ops), f"{per(len(dec.cpu_ops)):g}"),
        row("unattributed (no timer)", pre.unattributed_ms, dec.unattributed_ms),
        row("  inside the layer loop", pre.loop_untimed_ms, dec.loop_untimed_ms),
        row("  outside the layer loop", pre.unattributed_ms - pre.loop_untimed_ms,
            dec.unattributed_ms - dec.loop_untimed_ms),
        row("= phase wall", pre.wall_ms, dec.wall_ms),
        row("layer-loop envelope", pre.loop_ms, dec.loop_ms),
    ]  # fmt: skip
    columns = ("", "prefill n", "prefill ms", "% wall", "decode n/step", "decode ms/step", "% wall")
    notes = [
        f"Prefill: kernels {ms(pre.kernel_ms)} ms ({len(pre.kernels)} calls) + CPU "
        f"{ms(pre.cpu_ms)} ms = {ms(pre.kernel_ms + pre.cpu_ms)} ms accounted vs wall "
        f"{ms(pre.wall_ms)} ms -> {ms(pre.unattributed_ms)} ms unattributed "
        f"({share(pre.unattributed_ms, pre.wall_ms)}), {ms(pre.loop_untimed_ms)} ms of it "
        "inside the layer loop.",
        "The layer-loop envelope holds the per-layer kernel calls and CPU ops: it is shown "
        "for scale and not added to the rows above it.",
    ]
    if dec.steps:
        notes.insert(1, (
            f"Decode, per step: kernels {ms(per(dec.kernel_ms))} ms + CPU {ms(per(dec.cpu_ms))}"
            f" ms = {ms(per(dec.kernel_ms + dec.cpu_ms))} ms accounted vs wall "
            f"{ms(report.tpot_ms)} ms -> {ms(per(dec.unattributed_ms))} ms unattributed."
        ))  # fmt: skip
    return Section("WALL-TIME ATTRIBUTION", [Table(columns, rows)], notes)


def per_layer_section(report: Report) -> Section:
    tables = [_prefill_layers(report)]
    if report.decode.steps:
        tables.append(_decode_layers(report))
    return Section("PER-LAYER EXECUTION", tables)


def _prefill_layers(report: Report) -> Table:
    phase, steps = report.prefill, PREFILL_FLOW.layer
    rows = []
    for layer in range(report.info.n_layers):
        wall = phase.layer_walls(layer).total_ms
        parts = [phase.step_stats(s, layer).total_ms for s in steps]
        rows.append((layer, ms(wall), *map(ms, parts), ms(wall - sum(parts))))
    columns = ("layer", "wall ms", *(s.name for s in steps), "untimed")
    return Table(columns, rows, "Prefill: one row per layer (ms)")


def _decode_layers(report: Report) -> Table:
    phase, steps = report.decode, DECODE_FLOW.layer
    rows = []
    for layer in range(report.info.n_layers):
        walls = phase.layer_walls(layer)
        parts = [phase.per_step(phase.step_stats(s, layer).total_ms) for s in steps]
        rows.append((layer, ms(walls.avg_ms), ms(walls.min_ms), ms(walls.max_ms),
                     *map(ms, parts), ms(walls.avg_ms - sum(parts))))  # fmt: skip
    columns = ("layer", "avg ms", "min ms", "max ms", *(s.name for s in steps), "untimed")
    title = f"Decode: each layer over {phase.steps} steps (step columns: mean ms per step)"
    return Table(columns, rows, title)


def kernel_section(report: Report) -> Section:
    tables = []
    for phase in report.phases:
        rows = []
        for elf in report.elfs_of(phase.name):
            s, floor = elf.stats, elf.floor_ms(report.rates)
            rows.append((elf.spec.instance, len(elf.spec.launches), s.count, ms(s.avg_ms),
                         ms(s.min_ms), ms(s.max_ms), ms(s.total_ms),
                         share(s.total_ms, phase.wall_ms), ms(floor, 3),
                         f"{s.avg_ms / floor:.1f}x", ms(elf.floor_ms(NPU2_RATES), 3),
                         ms(report.npu2_model_ms.get(elf.spec.instance), 3)))  # fmt: skip
        if rows:
            columns = ("ELF", "launches", "calls", "avg ms", "min ms", "max ms", "total ms",
                       "% wall", "floor ms", "vs floor", "npu2 floor ms",
                       "npu2 model ms")  # fmt: skip
            title = f"{phase.name}: one call = one ELF run with all its launches"
            tables.append(Table(columns, rows, title))
    tables.append(roofline_table(report))
    notes = [
        "npu2 model ms: one call on a Strix NPU as the build's time model "
        "(aiebuild/array/timing.py) predicts it, recorded in the manifest."
    ]
    if beats_floor(report):
        notes.append(
            f"A kernel ran faster than its floor: the {report.rates.device} rates above are "
            f"lower than this machine reaches (measured while it was busy?). Delete "
            f"{rates_cache()} to measure them again."
        )
    return Section("KERNEL CALL BREAKDOWN", tables, notes)


def roofline_table(report: Report) -> Table:
    rates, rows = report.rates, []
    for elf in report.elfs:
        cost, avg_s = elf.cost, elf.stats.avg_ms / 1e3
        rows.append((
            f"{elf.phase}/{elf.spec.instance}", f"{cost.flops / 1e9:.4f}",
            f"{cost.bytes / 1e6:.3f}", rates.bound(cost), ms(elf.floor_ms(rates), 3),
            f"{cost.flops / avg_s / 1e9:.2f}", f"{cost.bytes / avg_s / 1e9:.2f}",
            ms(elf.floor_ms(NPU2_RATES), 3),
        ))  # fmt: skip
    notes = [
        f"floor = max(FLOPs / {rates.flops_per_s / 1e9:.1f} GFLOP/s, bytes / "
        f"{rates.bytes_per_s / 1e9:.1f} GB/s) on {rates.device} ({rates.source}).",
        f"npu2 floor: {NPU2_RATES.source}.",
        "Bytes moved: each launch reads its operands from DDR and writes its results to DDR "
        "(the host-visible arguments plus every intermediate between launches).",
    ]
    columns = ("phase/ELF", "GFLOP/call", "MB moved/call", "bound", "floor ms",
               "achieved GFLOP/s", "achieved GB/s", "npu2 floor ms")  # fmt: skip
    title = "Roofline: the work of one call and the fastest the device could do it"
    return Table(columns, rows, title, notes)


def cpu_section(report: Report) -> Section:
    tables = []
    for phase in report.phases:
        rows = []
        for name in dict.fromkeys(c.name for c in phase.cpu_ops):  # first-seen order
            s = phase.cpu_stats(name)
            rows.append((name, s.count, ms(s.avg_ms, 3), ms(s.min_ms, 3), ms(s.max_ms, 3),
                         ms(s.total_ms), ms(phase.per_step(s.total_ms))))  # fmt: skip
        if rows:
            rows.append(("total CPU", len(phase.cpu_ops), "", "", "", ms(phase.cpu_ms),
                         ms(phase.per_step(phase.cpu_ms))))  # fmt: skip
            columns = ("op", "count", "avg ms", "min ms", "max ms", "total ms", "ms/step")
            tables.append(Table(columns, rows, f"{phase.name} CPU ops"))
    return Section("CPU OP BREAKDOWN", tables)


def fine_grained_section(report: Report) -> Section:
    tables = []
    for phase in report.phases:
        rows: list[tuple[Any, ...]] = [
            (elf.spec.instance, elf.stats.count, *(ms(elf.segment_ms(s), 3) for s in SEGMENTS),
             f"{elf.bytes_written_per_call / 1e6:.3f}")
            for elf in report.elfs_of(phase.name)
        ]  # fmt: skip
        if not rows:
            continue
        totals = [sum(getattr(k, s) for k in phase.kernels) * 1e3 for s in SEGMENTS]
        rows.append((f"all ({phase.name} total ms)", len(phase.kernels),
                     *(f"{ms(t)} ({share(t, sum(totals))})" for t in totals),
                     f"{sum(k.bytes_written for k in phase.kernels) / 1e6:.3f} total"))  # fmt: skip
        columns = ("ELF", "calls", "bind+write ms/call", "run ms/call", "read ms/call",
                   "MB written/call")  # fmt: skip
        tables.append(Table(columns, rows, f"{phase.name}: each call as write / run / read"))
    emulated = " (the numpy emulation)" if report.info.device == "emu" else ""
    notes = [
        "bind+write: binding every argument's buffer, copying the host inputs that changed "
        "(weights were written once, at prepare) and staging the call (on the NPU: its "
        "hardware context and run object, made on first use); run: the device executing all "
        f"launches of the ELF{emulated}; read: syncing the outputs the host reads "
        "(zero-copy views).",
    ]
    return Section("FINE-GRAINED BREAKDOWN", tables, notes)


def trend_section(report: Report) -> Section:
    steps = report.decode.token_steps()
    if not steps:
        return Section("PER-TOKEN WALL TREND", [], ["No decode step was recorded."])
    picks = {"token 1 (first step)": steps[0], "middle": steps[len(steps) // 2],
             "last": steps[-1]}  # fmt: skip
    rows = [(label, s.step, s.position, ms(s.wall_ms), ms(s.loop_ms))
            for label, s in picks.items()]  # fmt: skip
    walls, loops = [s.wall_ms for s in steps], [s.loop_ms for s in steps]
    for label, fn in (("min", min), ("max", max), ("avg", mean)):
        rows.append((label, "", "", ms(fn(walls)), ms(fn(loops))))
    rows.append(("drift first -> last", "", "", _drift(walls), _drift(loops)))
    table = Table(("", "step", "position", "step wall ms", "layer-loop ms"), rows)
    notes = [
        "Decode attention reads more of the KV cache as the position grows (emu the "
        "cached positions; the NPU the shortest compiled walk past them, o_gemv_ffn.w<W> "
        "or the whole cache), so a step's cost can grow with its position; run-to-run "
        "noise (other processes on the host) shows up here too.",
    ]
    return Section("PER-TOKEN WALL TREND", [table], notes)


def _drift(values: list[float]) -> str:
    return f"{100 * (values[-1] - values[0]) / values[0]:+.1f}%" if values[0] else "n/a"


def latency_section(report: Report) -> Section:
    info, pre = report.info, report.prefill
    lines = [
        f"TTFT (time to first token: prefill end to end, tokenize + eos_pad + embed + "
        f"{info.n_layers} x layer + final RMSNorm + LM head): {ms(report.ttft_ms)} ms "
        f"({info.prompt_tokens} prompt tokens in bucket {info.seq_len}; "
        f"{share(pre.kernel_ms, pre.wall_ms)} in {info.tag} kernel calls)",
    ]
    if report.tpot_ms:
        lines.append(
            f"TPOT (time per output token: mean decode step wall over {report.decode.steps} "
            f"steps): {ms(report.tpot_ms)} ms ({1e3 / report.tpot_ms:.2f} tok/s)"
        )
    else:
        lines.append("TPOT: n/a (no decode step ran)")
    lines.append(f"Preprocessing (one-time prepare, not in TTFT): {ms(report.prepare_ms)} ms")
    return Section("TTFT / TPOT", [], lines)


# -- text ------------------------------------------------------------------------------
def render_text(report: Report) -> str:
    return render_sections([headline(report), largest_shares(report)], sections(report))


def render_sections(lead: list[str], parts: list[Section]) -> str:
    """Lines of text, then each section: its title, its tables and its notes."""
    out = list(lead)
    for section in parts:
        out += ["", "=" * 100, section.title, "=" * 100]
        for table in section.tables:
            out += render_table(table)
        out += section.notes
    return "\n".join(out) + "\n"


def headline(report: Report) -> str:
    info = report.info
    load = f"; host load average {info.load_avg:.2f} at start" if info.load_avg is not None else ""
    steps = report.decode.steps
    # A run that stopped at end-of-turn ran one decode step more than it yielded
    # tokens after the first: the step whose token was end-of-turn.
    ended = steps and steps == info.generated_tokens
    stopped = ", the last one produced end-of-turn" if ended else ""
    return (
        f"aierun profile: {info.model} on {info.device} ({info.tag}), {info.prompt_tokens} "
        f"prompt tokens in bucket {info.seq_len}, {info.generated_tokens} tokens generated "
        f"({steps} decode steps{stopped}){load}"
    )


def largest_shares(report: Report) -> str:
    """The hot spot of each phase in one sentence: the step with the largest share of
    its wall, and which ELF the npu2 model expects to dominate."""
    parts = []
    labels = (("the prefill", "TTFT"), ("a decode step", "TPOT"))
    for flow, (label, wall_name) in zip((PREFILL_FLOW, DECODE_FLOW), labels, strict=True):
        phase = report.phase(flow.phase)
        if not phase.steps:
            continue
        steps = report.step_ms(flow)
        name = max(steps, key=steps.__getitem__)
        wall = phase.per_step(phase.wall_ms)
        part = f"{name} takes {share(steps[name], wall)} of {label} ({ms(steps[name], 1)} of " \
            f"{ms(wall, 1)} ms {wall_name})"  # fmt: skip
        modeled = report.npu2_step_ms(flow)
        if modeled:
            top = max(modeled, key=modeled.__getitem__)
            part += f"; on the npu2 model {top} takes {share(modeled[top], sum(modeled.values()))}"
            part += " of its kernel time"
        parts.append(part)
    return "Largest share: " + "; ".join(parts) + "."


def render_table(table: Table) -> list[str]:
    cells = [[str(c) for c in table.columns]] + [[str(c) for c in row] for row in table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    right = [all(is_number(r[i]) for r in cells[1:] if r[i]) for i in range(len(widths))]

    def line(row: list[str]) -> str:
        laid_out = zip(row, widths, right, strict=True)
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in laid_out).rstrip()

    lines = [f"-- {table.title}"] if table.title else []
    lines += [line(cells[0]), "  ".join("-" * w for w in widths)]
    return [*lines, *(line(row) for row in cells[1:]), *table.notes, ""]
