"""What one profiled run measured, grouped the way the report reads it.

Everything here is a sum of intervals the always-on profiler recorded during the
production run (kernel calls split into write / run / read, CPU ops, and the
phase / token / layer-loop / layer spans). The only derived quantity,
"unattributed", is a phase's wall minus its kernel and CPU time: the time no
timer covers (Python scheduling between the timed steps).

Definitions, as in the seed: TTFT is the prefill phase's wall (tokenize to the
LM head's logits: the first generated token comes out of prefill); TPOT is the
mean wall of one decode step (each step produces the next token).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import mean

from aierun.abi import ElfSpec
from aierun.profiling.flow import Flow, Step
from aierun.profiling.recorder import CpuOp, KernelCall, Profiler, Span
from aierun.profiling.roofline import Cost, Rates, elf_cost


# -- what was measured ---------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    device: str
    model: str
    prompt_tokens: int
    seq_len: int  # the prefill bucket the prompt ran in
    generated_tokens: int
    n_layers: int
    # The host's 1-minute load average when the run started: other processes on the
    # same cores slow the emulator (and the host side of an NPU run) down.
    load_avg: float | None = None

    @property
    def tag(self) -> str:
        """How kernel rows are tagged: EMU on the emulator, NPU on the device."""
        return "EMU" if self.device == "emu" else "NPU"


@dataclass(frozen=True)
class Stats:
    """Durations (seconds) of one kind of record; times in the report are ms."""

    durations: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.durations)

    @property
    def total_ms(self) -> float:
        return sum(self.durations) * 1e3

    @property
    def avg_ms(self) -> float:
        return self.total_ms / self.count if self.count else 0.0

    @property
    def min_ms(self) -> float:
        return min(self.durations, default=0.0) * 1e3

    @property
    def max_ms(self) -> float:
        return max(self.durations, default=0.0) * 1e3


SEGMENTS = ("write_s", "run_s", "read_s")  # the parts of one kernel call


@dataclass(frozen=True)
class ElfStats:
    """The calls of one ELF instance in one phase, with its roofline cost."""

    phase: str
    spec: ElfSpec
    calls: tuple[KernelCall, ...]
    cost: Cost

    @property
    def stats(self) -> Stats:
        return Stats(tuple(c.total_s for c in self.calls))

    def segment_ms(self, segment: str) -> float:
        """Mean ms per call of one of SEGMENTS."""
        return mean(getattr(c, segment) for c in self.calls) * 1e3

    @property
    def bytes_written_per_call(self) -> float:
        return mean(c.bytes_written for c in self.calls)

    def floor_ms(self, rates: Rates) -> float:
        return rates.floor_s(self.cost) * 1e3


def within(start: float, spans: Iterable[Span]) -> bool:
    """Whether a record that started at `start` lies inside one of `spans`."""
    return any(s.start <= start < s.start + s.dur_s for s in spans)


@dataclass(frozen=True)
class TokenStep:
    step: int  # 1 = the first decode step (it produces the second generated token)
    position: int  # the KV-cache position the step writes (it attends over position + 1)
    wall_ms: float
    loop_ms: float


@dataclass
class Phase:
    """The records of one phase: its wall spans (one for prefill, one per decode
    step), the kernel calls and CPU ops inside, the layer-loop ("layers"), "layer"
    and decode "token" spans. `elf_names` maps ELF instances to ELF names."""

    name: str
    walls: list[Span]
    kernels: list[KernelCall]
    cpu_ops: list[CpuOp]
    loops: list[Span]
    layers: list[Span]
    tokens: list[Span]
    elf_names: dict[str, str]

    @classmethod
    def of(cls, profiler: Profiler, name: str, elf_names: dict[str, str]) -> Phase:
        spans = [s for s in profiler.spans if s.phase == name]

        def named(kind: str) -> list[Span]:
            return [s for s in spans if s.name == kind]

        return cls(
            name, named(name),
            [k for k in profiler.kernels if k.phase == name],
            [c for c in profiler.cpu_ops if c.phase == name],
            named("layers"), named("layer"), named("token"), elf_names,
        )  # fmt: skip

    @property
    def steps(self) -> int:
        return len(self.walls)

    def per_step(self, value: float) -> float:
        return value / self.steps if self.steps else 0.0

    @property
    def wall_ms(self) -> float:
        return sum(s.dur_s for s in self.walls) * 1e3

    @property
    def kernel_ms(self) -> float:
        return sum(k.total_s for k in self.kernels) * 1e3

    @property
    def cpu_ms(self) -> float:
        return sum(c.dur_s for c in self.cpu_ops) * 1e3

    @property
    def unattributed_ms(self) -> float:
        return self.wall_ms - self.kernel_ms - self.cpu_ms

    @property
    def loop_ms(self) -> float:
        """The layer-loop envelope: wall of the loops over all layers."""
        return sum(s.dur_s for s in self.loops) * 1e3

    @property
    def loop_untimed_ms(self) -> float:
        """Time inside the layer loops that no kernel or CPU timer covers."""
        timed = sum(k.total_s for k in self.kernels if within(k.start, self.loops))
        timed += sum(c.dur_s for c in self.cpu_ops if within(c.start, self.loops))
        return self.loop_ms - timed * 1e3

    def cpu_stats(self, op: str) -> Stats:
        return Stats(tuple(c.dur_s for c in self.cpu_ops if c.name == op))

    def step_stats(self, step: Step, layer: int | None = None) -> Stats:
        """The records of one dataflow step (in one layer, if given)."""
        if step.kind == "cpu":
            found = [(c.layer, c.dur_s) for c in self.cpu_ops if c.name == step.name]
        else:
            found = [(k.layer, k.total_s) for k in self.kernels
                     if self.elf_names[k.elf] == step.name]  # fmt: skip
        return Stats(tuple(d for at, d in found if layer is None or at == layer))

    def layer_walls(self, layer: int) -> Stats:
        return Stats(tuple(s.dur_s for s in self.layers if s.index == layer))

    def token_steps(self) -> list[TokenStep]:
        """Each decode step's wall and layer-loop wall, in order."""
        steps = []
        for number, wall in enumerate(self.walls, 1):
            token = [s.index for s in self.tokens if within(s.start, [wall])]
            loop = sum(s.dur_s for s in self.loops if within(s.start, [wall]))
            position = token[0] if token and token[0] is not None else -1
            steps.append(TokenStep(number, position, wall.dur_s * 1e3, loop * 1e3))
        return steps


@dataclass
class Report:
    """Everything the report sections, the JSON and the HTML are made of."""

    info: RunInfo
    rates: Rates
    prepare_ms: float | None  # None when the session was prepared before recording
    prefill: Phase
    decode: Phase
    elfs: list[ElfStats]
    profiler: Profiler = field(repr=False)
    # Modeled npu2 ms of one call per ELF instance, from its artifact (None: not modeled).
    npu2_model_ms: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def build(
        cls, profiler: Profiler, info: RunInfo, specs: dict[str, ElfSpec], rates: Rates
    ) -> Report:
        """`specs` maps every ELF instance the profiler saw to its spec."""
        prepare = [s for s in profiler.spans if s.name == "prepare"]
        groups: dict[tuple[str, str], list[KernelCall]] = {}
        for call in profiler.kernels:
            groups.setdefault((call.phase, call.elf), []).append(call)
        elfs = [
            ElfStats(phase, specs[instance], tuple(calls), elf_cost(specs[instance]))
            for (phase, instance), calls in groups.items()
        ]
        names = {instance: spec.name for instance, spec in specs.items()}
        return cls(
            info, rates,
            sum(s.dur_s for s in prepare) * 1e3 if prepare else None,
            Phase.of(profiler, "prefill", names), Phase.of(profiler, "decode", names),
            elfs, profiler,
        )  # fmt: skip

    def phase(self, name: str) -> Phase:
        return self.prefill if name == "prefill" else self.decode

    @property
    def phases(self) -> tuple[Phase, Phase]:
        return self.prefill, self.decode

    @property
    def ttft_ms(self) -> float:
        return self.prefill.wall_ms

    @property
    def tpot_ms(self) -> float | None:
        return self.decode.per_step(self.decode.wall_ms) if self.decode.steps else None

    def elfs_of(self, phase: str) -> list[ElfStats]:
        return [e for e in self.elfs if e.phase == phase]

    def npu2_run_ms(self, elf: ElfStats) -> float | None:
        """The modeled npu2 time of this run's calls of `elf` (its modeled call times
        the calls made), per decode step in decode; None where the ELF has no model."""
        model = self.npu2_model_ms.get(elf.spec.instance)
        steps = self.phase(elf.phase).steps if elf.phase == "decode" else 1
        return None if model is None or not steps else elf.stats.count * model / steps

    def step_ms(self, flow: Flow) -> dict[str, float]:
        """Each step of `flow`, in its order: the ms its phase spent in it (per decode
        step in decode)."""
        phase = self.phase(flow.phase)
        return {s.name: phase.per_step(phase.step_stats(s).total_ms) for s in flow.steps}

    def npu2_step_ms(self, flow: Flow) -> dict[str, float] | None:
        """The ELF steps of `flow` as the npu2 model times them (None when an ELF of the
        phase has no model); CPU steps are not modeled."""
        parts: dict[str, float] = {}
        for elf in self.elfs_of(flow.phase):
            modeled = self.npu2_run_ms(elf)
            if modeled is None:
                return None
            parts[elf.spec.name] = parts.get(elf.spec.name, 0.0) + modeled
        order = [s.name for s in flow.steps if s.name in parts]
        return {name: parts[name] for name in order} if parts else None


def beats_floor(report: Report) -> bool:
    """Some kernel ran faster than the rates allow: the rates are too low."""
    return any(e.stats.avg_ms < e.floor_ms(report.rates) for e in report.elfs)
