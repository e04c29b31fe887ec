"""The profile as one self-contained HTML page: the hot spot in a sentence, where the
trace is, a colour legend, the charts (`aierun.profiling.charts`), the dataflow of
prefill and of one decode step drawn as SVG boxes carrying their measured times, then
every report section as a table. No scripts, fonts or files from elsewhere: it opens
offline.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from aierun.profiling.charts import STEP_COLORS, UNTIMED, charts
from aierun.profiling.flow import DECODE_FLOW, PREFILL_FLOW, Flow, Step
from aierun.profiling.report import Report
from aierun.profiling.text import (
    NO_TIMER,
    Section,
    Table,
    headline,
    is_number,
    largest_shares,
    ms,
    sections,
    step_tag,
)

BOX_W, BOX_H, GAP = 220, 66, 44  # box size and the space the arrows take
COLORS = {"CPU": "#dbeafe", "EMU": "#fde68a", "NPU": "#fde68a", NO_TIMER: "#e5e7eb"}
BORDERS = {"CPU": "#2563eb", "EMU": "#b45309", "NPU": "#b45309", NO_TIMER: "#6b7280"}

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #111827; max-width: 1300px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 2px solid #d1d5db; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin-bottom: 8px; }
th, td { border: 1px solid #d1d5db; padding: 3px 8px; white-space: pre; }
th { background: #f3f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; gap: 16px; margin: 12px 0 20px; }
.card { border: 1px solid #d1d5db; border-radius: 8px; padding: 10px 16px; min-width: 180px; }
.card b { display: block; font-size: 24px; }
.note { color: #374151; font-size: 13px; margin: 4px 0; }
.lead { font-size: 16px; font-weight: 600; background: #fff7ed; border-left: 4px solid #ea580c;
        padding: 8px 12px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 13px; margin: 6px 0; }
.legend span::before { content: ""; display: inline-block; width: 12px; height: 12px;
                       margin-right: 5px; vertical-align: -1px; background: var(--c); }
figure { margin: 0 0 12px; } figcaption { font-weight: 600; font-size: 15px; margin: 14px 0 4px; }
svg { max-width: 100%; height: auto; }
code { background: #f3f4f6; padding: 1px 4px; }
"""
PERFETTO = "https://ui.perfetto.dev"


def render_html(report: Report, trace: Path | None = None) -> str:
    """The page; `trace` is the Perfetto trace file written beside it, if any."""
    info = report.info
    title = f"aierun profile: {info.model} on {info.device}"
    tpot = report.tpot_ms
    cards = [
        ("TTFT", f"{ms(report.ttft_ms, 1)} ms",
         f"{info.prompt_tokens} tokens, bucket {info.seq_len}"),
        ("TPOT", f"{ms(tpot, 1)} ms", f"{1e3 / tpot:.2f} tok/s" if tpot else "no decode step"),
        ("prepare (one-time)", f"{ms(report.prepare_ms, 1)} ms", "not in TTFT"),
    ]  # fmt: skip
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="note">{escape(headline(report))}</p>',
        f'<p class="lead">{escape(largest_shares(report))}</p>',
        cards_html(cards),
        f'<p class="note">{trace_note(trace)}</p>',
        "<h2>Charts</h2>",
        legend_html(),
        *(f"<figure><figcaption>{escape(t)}</figcaption>{svg}</figure>"
          for t, svg in charts(report)),
        "<h2>Dataflow</h2>",
        f"<h3>Prefill: prompt to first token ({info.prompt_tokens} prompt tokens)</h3>",
        flow_svg(report, PREFILL_FLOW, f"first token · TTFT {ms(report.ttft_ms, 1)} ms"),
    ]  # fmt: skip
    if report.decode.steps:
        body += [
            f"<h3>Decode: one step (mean over {report.decode.steps} steps)</h3>",
            flow_svg(report, DECODE_FLOW, f"next token · TPOT {ms(tpot, 1)} ms"),
        ]
    body += [section_html(s) for s in sections(report)]
    return page(title, body)


def page(title: str, body: list[str]) -> str:
    """A whole page: the style inline, nothing loaded from elsewhere."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def cards_html(cards: list[tuple[str, str, str]]) -> str:
    """(name, value, line under it) as a row of cards."""
    return '<div class="cards">' + "".join(
        f'<div class="card">{escape(k)}<b>{escape(v)}</b>{escape(sub)}</div>'
        for k, v, sub in cards
    ) + "</div>"  # fmt: skip


def trace_note(trace: Path | None) -> str:
    """Where the trace is and how to open it. The address is text, not a link: the
    page loads nothing, and Perfetto opens a local file from its own page."""
    how = (f"open <code>{PERFETTO}</code>, choose &ldquo;Open trace file&rdquo; and pick it "
           "(or drop it on the page); the file stays on this machine.")  # fmt: skip
    if trace is None:
        return f"Timeline: write a Perfetto trace with <code>--trace PATH</code>, then {how}"
    return f"Timeline of every call: <code>{escape(str(trace))}</code>; {how}"


def legend_html() -> str:
    """The colour of each step on every chart and what kind of step it is."""
    kinds = {s.name: s.kind for f in (PREFILL_FLOW, DECODE_FLOW) for s in f.steps}
    groups = {"host (CPU) ops": "cpu", "ELFs (device)": "kernel"}
    parts = []
    for label, kind in groups.items():
        names = [n for n in STEP_COLORS if kinds.get(n) == kind]
        parts.append(f'<div class="legend"><b>{label}:</b>' + "".join(
            f'<span style="--c:{STEP_COLORS[n]}">{escape(n)}</span>' for n in names))  # fmt: skip
    parts[-1] += f'<span style="--c:{STEP_COLORS[UNTIMED]}">{UNTIMED} (no timer)</span>'
    return "</div>".join(parts) + "</div>"


def section_html(section: Section) -> str:
    parts = [f"<h2>{escape(section.title)}</h2>"]
    parts += [table_html(t) for t in section.tables]
    parts += [f'<p class="note">{escape(n)}</p>' for n in section.notes]
    return "\n".join(parts)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(_cell(c, i) for i, c in enumerate(row)) + "</tr>" for row in table.rows
    )
    title = f"<h3>{escape(table.title)}</h3>" if table.title else ""
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in table.notes)
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{notes}"


def _cell(value: object, column: int) -> str:
    align = ' class="num"' if column > 0 and is_number(value) else ""
    return f"<td{align}>{escape(str(value))}</td>"


# -- the SVG dataflow -------------------------------------------------------------------
class _Canvas:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.width = 0.0
        self.height = 0.0

    def _grow(self, x: float, y: float) -> None:
        self.width, self.height = max(self.width, x), max(self.height, y)

    def box(self, x: float, y: float, tag: str, lines: list[str], dashed: bool = False) -> None:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        self.items.append(
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" '
            f'fill="{COLORS[tag]}" stroke="{BORDERS[tag]}" stroke-width="1.5"{dash}/>'
        )
        for i, line in enumerate(lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            self.text(x + 10, y + 20 + 18 * i, line, 14 if i == 0 else 13, weight)
        self._grow(x + BOX_W, y + BOX_H)

    def text(self, x: float, y: float, text: str, size: int = 13, extra: str = "") -> None:
        self.items.append(f'<text x="{x}" y="{y}" font-size="{size}"{extra}>{escape(text)}</text>')
        self._grow(x + 0.62 * size * len(text), y + 4)  # a generous average glyph width

    def arrow(self, x1: float, y1: float, x2: float, y2: float, dashed: bool = False) -> None:
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        self.items.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#374151" '
            f'stroke-width="1.5" marker-end="url(#arrow)"{dash}/>'
        )

    def container(self, x: float, y: float, w: float, h: float) -> None:
        self.items.insert(0, f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="12" '
                             'fill="#f9fafb" stroke="#9ca3af" stroke-width="1.5"/>')  # fmt: skip
        self._grow(x + w, y + h)

    def svg(self) -> str:
        marker = (
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            'fill="#374151"/></marker></defs>'
        )
        w, h = self.width + 20, self.height + 20
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
            f'viewBox="0 0 {w:.0f} {h:.0f}">{marker}' + "".join(self.items) + "</svg>"
        )


def _box_lines(report: Report, flow: Flow, step: Step) -> tuple[str, list[str]]:
    phase = report.phase(flow.phase)
    stats = phase.step_stats(step)
    tag = step_tag(report, step)
    unit = "/step" if flow.phase == "decode" else ""
    return tag, [
        step.name,
        f"{tag} · {ms(stats.avg_ms)} ms per call",
        f"{_calls(phase.per_step(stats.count))}{unit} · {ms(phase.per_step(stats.total_ms))} "
        f"ms{unit}",
    ]


def _calls(count: float) -> str:
    return f"{count:g} call" + ("" if count == 1 else "s")


def _row(canvas: _Canvas, report: Report, flow: Flow, steps: tuple[Step, ...], y: float) -> None:
    """Boxes left to right, joined by arrows."""
    for i, step in enumerate(steps):
        x = 10 + i * (BOX_W + GAP)
        canvas.box(x, y, *_box_lines(report, flow, step))
        if i:
            canvas.arrow(x - GAP, y + BOX_H / 2, x - 2, y + BOX_H / 2)


def flow_svg(report: Report, flow: Flow, end_label: str) -> str:
    """Head steps in a row, the decoder layer as a container holding its steps, then
    the tail steps ending in the token the phase produces."""
    canvas, left = _Canvas(), 10
    _row(canvas, report, flow, flow.head, left)
    top = left + BOX_H + GAP
    canvas.arrow(left + BOX_W / 2, left + BOX_H, left + BOX_W / 2, top - 2)
    bottom = _decoder_layer(canvas, report, flow, top)
    tail_y = bottom + GAP
    canvas.arrow(left + BOX_W / 2, bottom, left + BOX_W / 2, tail_y - 2)
    _row(canvas, report, flow, flow.tail, tail_y)
    end_x = left + len(flow.tail) * (BOX_W + GAP)
    canvas.arrow(end_x - GAP, tail_y + BOX_H / 2, end_x - 2, tail_y + BOX_H / 2)
    canvas.text(end_x + 4, tail_y + BOX_H / 2 + 5, end_label, 15, ' font-weight="bold"')
    return canvas.svg()


def _decoder_layer(canvas: _Canvas, report: Report, flow: Flow, top: float) -> float:
    """The layer loop as a container: main steps left to right, side branches hung
    dashed below the step whose outputs they consume. Returns the container's bottom."""
    phase, n = report.phase(flow.phase), report.info.n_layers
    inner_y = top + 40
    x_of: dict[str, float] = {}
    main = [s for s in flow.layer if not s.branch_of]
    for i, step in enumerate(main):
        x_of[step.name] = x = 30 + i * (BOX_W + GAP)
        if i:
            canvas.arrow(x - GAP, inner_y + BOX_H / 2, x - 2, inner_y + BOX_H / 2)
        canvas.box(x, inner_y, *_box_lines(report, flow, step))
    branches = [s for s in flow.layer if s.branch_of]
    for step in branches:
        x, y = x_of[step.branch_of], inner_y + BOX_H + GAP
        canvas.arrow(x + BOX_W / 2, inner_y + BOX_H, x + BOX_W / 2, y - 2, dashed=True)
        canvas.box(x, y, *_box_lines(report, flow, step), dashed=True)
    bottom = inner_y + BOX_H + (BOX_H + GAP if branches else 0) + 40
    loop_ms = phase.per_step(phase.loop_ms)
    canvas.text(24, top + 24, f"decoder layer × {n} · loop wall {ms(loop_ms)} ms "
                f"({ms(loop_ms / n)} ms per layer)", 14, ' font-weight="bold"')  # fmt: skip
    untimed = phase.per_step(phase.loop_untimed_ms)
    canvas.text(30, bottom - 14, f"untimed inside the loop: {ms(untimed)} ms")
    canvas.container(10, top, len(main) * (BOX_W + GAP) - GAP + 40, bottom - top)
    return bottom
