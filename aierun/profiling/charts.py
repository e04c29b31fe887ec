"""The profile's charts, drawn with matplotlib as SVG for the HTML page to inline: where
each phase's time goes (measured, the npu2 model, the seed), each ELF's call against
the npu2 model and the seed, the prefill per layer, the decode trend per token, and the
roofline. Every step has one colour on every chart (`STEP_COLORS`, the page's legend).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

from aierun.profiling.flow import DECODE_FLOW, PREFILL_FLOW, Flow
from aierun.profiling.report import ElfStats, Report
from aierun.profiling.roofline import NPU2_RATES, Rates
from aierun.profiling.seed import seed_profile

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

UNTIMED = "untimed"
# Host ops in blues, ELFs in warm colours: the dataflow's host-blue / device-yellow.
STEP_COLORS = {
    "tokenize": "#93c5fd", "eos_pad": "#a5b4fc", "embed_lookup": "#3b82f6",
    "kv_cache_extract": "#1d4ed8", "kv_append": "#0891b2",
    "final_rms_norm": "#6366f1", "sample": "#14b8a6",
    "rms_gemms_rope": "#fbbf24", "flash_attn": "#ef4444", "o_ffn": "#ea580c",
    "lm_head_gemv": "#a16207", "rms_gemv_rope": "#f472b6", "o_gemv_ffn": "#be123c",
    UNTIMED: "#d1d5db",
}  # fmt: skip
# The three kinds of time set side by side.
MEASURED, MODELED, SEED = "#b45309", "#6b7280", "#111827"
STYLE = {
    "svg.fonttype": "none",  # text stays text: Chromium draws it, and it can be searched
    "svg.hashsalt": "aierun",  # fixed element ids: the same run draws the same page
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
}
WIDTH = 12.5  # inches; at matplotlib's 72 points per inch, 1200 CSS pixels
PLOT_PX = 800  # about how wide a bar chart's plot area is, in those pixels


def draw(height: float, paint: Callable[[Figure], None]) -> str:
    """One figure `height` inches tall painted by `paint`, as an <svg> element."""
    # Imported on the first chart, not with the module: the command line loads this
    # module for every command, and matplotlib takes about a second to import.
    # Figure, not pyplot: no global figures and no GUI backend, only the SVG writer.
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, height), layout="constrained")
        paint(figure)
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    return svg[svg.index("<svg") :]  # inline: no XML prolog or doctype


def charts(report: Report) -> list[tuple[str, str]]:
    """(title, svg) of every chart the run has data for, in page order."""
    out = [
        ("Where the time goes: each phase's steps, stacked", phases_chart(report)),
        ("One call of each ELF: measured, the npu2 model and the seed", elf_chart(report)),
        ("Prefill, layer by layer", layers_chart(report)),
    ]
    if report.decode.steps:
        out.append(("Decode, token by token", trend_chart(report)))
    out.append(("Roofline: each ELF's arithmetic intensity against the npu2 floor",
                roofline_chart(report)))  # fmt: skip
    return out


def _seed_step_ms(flow: Flow) -> dict[str, float]:
    """The seed's ELF time in one phase: its per-call times, the layer ELFs once per
    layer of its model."""
    seed = seed_profile()
    return {
        s.name: seed.elf_ms[s.name] * (seed.n_layers if s in flow.layer else 1)
        for s in flow.steps
        if s.name in seed.elf_ms
    }


def phases_chart(report: Report) -> str:
    """Per phase, three stacked bars: measured (with the time under no timer), the
    npu2 model of the same calls, and the seed's measured kernels."""
    info, seed = report.info, seed_profile()
    flows = [f for f in (PREFILL_FLOW, DECODE_FLOW) if report.phase(f.phase).steps]

    def paint(figure: Figure) -> None:
        for ax, flow in zip(figure.subplots(len(flows), 1, squeeze=False)[:, 0], flows,
                            strict=True):  # fmt: skip
            phase = report.phase(flow.phase)
            measured = report.step_ms(flow)
            measured[UNTIMED] = phase.per_step(phase.wall_ms) - sum(measured.values())
            bars = [
                (f"measured ({info.device})\n{info.model}, bucket {info.seq_len}", measured),
                ("npu2 model\nsame calls, kernels only", report.npu2_step_ms(flow)),
                (f"seed, kernels only\n{seed.model} × {seed.n_layers} layers, "
                 f"seq_len {seed.seq_len}", _seed_step_ms(flow)),
            ]  # fmt: skip
            _stacked(ax, bars)
            unit = "ms" if flow.phase == "prefill" else f"ms per step (mean of {phase.steps})"
            ax.set_title(f"{flow.phase}: {unit}", loc="left")

    return draw(2.0 + 1.6 * len(flows), paint)


def _stacked(ax: Axes, bars: list[tuple[str, dict[str, float] | None]]) -> None:
    """Horizontal stacked bars, top to bottom; a segment wide enough carries its name
    and share, each bar its total."""
    widest = max(sum(parts.values()) for _, parts in bars if parts)
    for row, (_, parts) in enumerate(bars):
        if not parts:
            ax.text(0, row, "  not modeled", va="center", color=MODELED)
            continue
        total, left = sum(parts.values()), 0.0
        for name, value in parts.items():
            ax.barh(row, value, left=left, color=STEP_COLORS[name], edgecolor="white",
                    linewidth=0.5)  # fmt: skip
            if value / (1.15 * widest) * PLOT_PX > 5.5 * len(name):  # the name fits
                ax.text(left + value / 2, row, f"{name}\n{100 * value / total:.0f}%",
                        ha="center", va="center", fontsize=8, color=_ink(name))  # fmt: skip
            left += value
        ax.text(total, row, f"  {total:,.1f} ms", va="center", fontweight="bold")
    ax.set_yticks(range(len(bars)), [label for label, _ in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, widest * 1.15)  # room for the totals
    ax.set_xlabel("ms")


def _ink(step: str) -> str:
    """Black text on a light step colour, white on a dark one."""
    r, g, b = (int(STEP_COLORS[step][i : i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def elf_chart(report: Report) -> str:
    """One call of each ELF, per phase: measured, the npu2 model and the seed, side by
    side on a log axis (they differ by orders of magnitude)."""
    seed = seed_profile()
    elfs = [e for phase in report.phases for e in report.elfs_of(phase.name)]
    series = (
        (f"measured ({report.info.device})", MEASURED, lambda e: e.stats.avg_ms),
        ("npu2 model", MODELED, lambda e: report.npu2_model_ms.get(e.spec.instance)),
        (seed.label, SEED, lambda e: seed.elf_ms.get(e.spec.name)),
    )

    def paint(figure: Figure) -> None:
        ax = figure.subplots()
        height = 0.8 / len(series)
        for i, (label, color, value) in enumerate(series):
            for row, elf in enumerate(elfs):
                v = value(elf)
                if v is None:
                    continue
                y = row + (i - 1) * height
                ax.barh(y, v, height, color=color, label=label if row == 0 else None)
                ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
        ax.set_yticks(range(len(elfs)), [f"{e.phase}/{e.spec.instance}" for e in elfs])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per call (log scale)")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, fontsize=8)

    return draw(1.4 + 0.55 * len(elfs), paint)


def layers_chart(report: Report) -> str:
    """The prefill's layers left to right, each stacked by its steps and the rest of
    its wall (time under no timer)."""
    phase, steps = report.prefill, PREFILL_FLOW.layer

    def paint(figure: Figure) -> None:
        ax = figure.subplots()
        layers = range(report.info.n_layers)
        bottom = [0.0 for _ in layers]
        for step in steps:
            values = [phase.step_stats(step, layer).total_ms for layer in layers]
            ax.bar(layers, values, bottom=bottom, color=STEP_COLORS[step.name], label=step.name)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        rest = [max(phase.layer_walls(layer).total_ms - b, 0.0)
                for layer, b in zip(layers, bottom, strict=True)]  # fmt: skip
        ax.bar(layers, rest, bottom=bottom, color=STEP_COLORS[UNTIMED], label=UNTIMED)
        ax.set_xlabel("layer")
        ax.set_ylabel("ms")
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)

    return draw(3.2, paint)


def trend_chart(report: Report) -> str:
    """Each decode step's wall and layer-loop wall against the KV position it writes,
    with the npu2 model's kernel time per step for scale."""
    steps = report.decode.token_steps()
    modeled = report.npu2_step_ms(DECODE_FLOW)

    def paint(figure: Figure) -> None:
        ax = figure.subplots()
        positions = [s.position for s in steps]
        ax.plot(positions, [s.wall_ms for s in steps], "o-", color=MEASURED,
                label=f"step wall ({report.info.device})", markersize=4)  # fmt: skip
        ax.plot(positions, [s.loop_ms for s in steps], "s--", color=STEP_COLORS["o_gemv_ffn"],
                label="layer loop", markersize=3)  # fmt: skip
        if modeled:
            ax.axhline(sum(modeled.values()), color=MODELED, linestyle=":",
                       label="npu2 model, kernels per step")  # fmt: skip
        ax.set_xlabel("KV-cache position the step writes")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right", fontsize=8)

    return draw(3.0, paint)


def roofline_chart(report: Report) -> str:
    """Achieved GFLOP/s against arithmetic intensity (FLOPs per DDR byte), log-log:
    each ELF as measured on this device and as the npu2 model times it, under the
    npu2 roof (and this device's, when it is another)."""
    # An ELF both phases call (the LM head) is one point: the same work each time.
    instances: dict[str, list[ElfStats]] = {}
    for elf in report.elfs:
        instances.setdefault(elf.spec.instance, []).append(elf)
    roofs = [NPU2_RATES]
    if report.rates.device != NPU2_RATES.device:
        roofs.append(report.rates)

    def paint(figure: Figure) -> None:
        ax = figure.subplots()
        points = []
        for instance, elfs in instances.items():
            cost = elfs[0].cost
            measured = sum(e.stats.total_ms for e in elfs) / sum(e.stats.count for e in elfs)
            modeled = report.npu2_model_ms.get(instance)
            points.append((instance, elfs[0].spec.name, cost, measured, modeled))
        intensity = [cost.flops / cost.bytes for _, _, cost, _, _ in points]
        ridges = [r.flops_per_s / r.bytes_per_s for r in roofs]
        low, high = min(intensity) / 3, max(*intensity, *ridges) * 3  # both ridges in view
        for rates, style in zip(roofs, ("-", "--"), strict=False):
            _roof(ax, rates, low, high, style)
        for (instance, name, cost, measured, modeled), x in zip(points, intensity, strict=True):
            color = STEP_COLORS[name]
            ax.plot(x, cost.flops / measured / 1e6, "o", color=color, markeredgecolor="black",
                    markersize=8)  # fmt: skip
            if modeled:  # joined to its measured point: the gap is the emulator's cost
                ys = [cost.flops / measured / 1e6, cost.flops / modeled / 1e6]
                ax.plot([x, x], ys, color=color, linewidth=1)
                ax.plot(x, ys[1], "D", color=color, markeredgecolor="black", markersize=7)
            ax.annotate(instance, (x, cost.flops / (modeled or measured) / 1e6),
                        textcoords="offset points", xytext=(7, 5), fontsize=8)  # fmt: skip
        ax.plot([], [], "o", color="white", markeredgecolor="black",
                label=f"measured ({report.info.device})")  # fmt: skip
        ax.plot([], [], "D", color="white", markeredgecolor="black", label="npu2 model")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity: FLOPs per DDR byte")
        ax.set_ylabel("GFLOP/s")
        ax.legend(loc="upper left", fontsize=8)

    return draw(4.6, paint)


def _roof(ax: Axes, rates: Rates, low: float, high: float, style: str) -> None:
    """min(peak FLOP/s, intensity x bytes/s): the fastest any kernel can go."""
    ridge = rates.flops_per_s / rates.bytes_per_s
    xs = [low, min(max(ridge, low), high), high]
    ys = [min(rates.flops_per_s, x * rates.bytes_per_s) / 1e9 for x in xs]
    ax.plot(xs, ys, style, color="black", linewidth=1.2,
            label=f"{rates.device} floor: {rates.flops_per_s / 1e9:,.0f} GFLOP/s, "
            f"{rates.bytes_per_s / 1e9:,.1f} GB/s")  # fmt: skip


def compare_chart(rows: list[tuple[str, float, float]], label_a: str, label_b: str) -> str:
    """Two runs' steps ("<phase>/<step>", A ms, B ms) as paired bars, one panel per
    phase (each on its own scale), in the order given (largest change first)."""
    phases = [p for p in ("prefill", "decode") if any(r[0].startswith(p + "/") for r in rows)]

    def paint(figure: Figure) -> None:
        panels = figure.subplots(1, len(phases), squeeze=False)[0]
        for ax, phase in zip(panels, phases, strict=True):
            mine = [r for r in rows if r[0].startswith(phase + "/")]
            for i, (label, color) in enumerate(((f"A: {label_a}", MODELED),
                                                (f"B: {label_b}", MEASURED))):  # fmt: skip
                values = [r[1 + i] for r in mine]
                ys = [row + (i - 0.5) * 0.4 for row in range(len(mine))]
                ax.barh(ys, values, 0.4, color=color, label=label)
                for y, v in zip(ys, values, strict=True):
                    ax.text(v, y, f" {v:,.0f}" if v >= 100 else f" {v:.3g}", va="center",
                            fontsize=8)  # fmt: skip
            ax.set_yticks(range(len(mine)), [r[0].split("/", 1)[1] for r in mine])
            ax.invert_yaxis()
            # Log: a ratio is the same gap anywhere, and small steps stay visible.
            ax.set_xscale("log")
            ax.set_xlim(right=max(max(r[1], r[2]) for r in mine) * 4)  # room for the values
            unit = "ms" if phase == "prefill" else "ms per decode step"
            ax.set_title(f"{phase}: {unit} (log scale)", loc="left")
        figure.legend(*panels[0].get_legend_handles_labels(), loc="outside lower center",
                      fontsize=8)  # fmt: skip

    return draw(1.6 + 0.42 * max(sum(r[0].startswith(p + "/") for r in rows) for p in phases),
                paint)  # fmt: skip
