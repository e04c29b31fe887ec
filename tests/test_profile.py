"""`profile`: the seed's report sections, the JSON contract, the trace, the HTML page
with its charts (also in headless Chromium), the roofline and the comparison of two
runs, from one short production run on the emulated device."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aierun import cli
from aierun.host.sampling import Sampling
from aierun.profiling import command, compare, roofline
from aierun.profiling.charts import MEASURED, MODELED, STEP_COLORS
from aierun.profiling.command import run_profile
from aierun.profiling.html import PERFETTO, render_html
from aierun.profiling.profile_json import to_json
from aierun.profiling.recorder import Profiler
from aierun.profiling.text import dataflow_section, render_text
from aierun.profiling.trace import trace_events

PROMPT = "What is the capital of France?"
N_TOKENS = 4
SECTIONS = (
    "END-TO-END DATAFLOW",
    "WALL-TIME ATTRIBUTION",
    "PER-LAYER EXECUTION",
    "KERNEL CALL BREAKDOWN",
    "CPU OP BREAKDOWN",
    "FINE-GRAINED BREAKDOWN",
    "PER-TOKEN WALL TREND",
    "TTFT / TPOT",
)
CONTRACT = {
    "top": {"schema", "device", "model", "prompt_tokens", "seq_len", "decode_tokens",
            "ttft_ms", "tpot_ms", "prepare_ms", "prefill", "decode", "kernels", "cpu_ops"},
    "prefill": {"wall_ms", "kernel_ms", "cpu_ms", "unattributed_ms", "kernel_calls"},
    "decode": {"wall_ms_per_token", "kernel_ms_per_token", "cpu_ms_per_token",
               "unattributed_ms_per_token", "kernel_calls_per_token", "per_token_ms"},
    "kernel": {"count", "avg_ms", "write_ms", "run_ms", "read_ms", "bytes_written"},
    "cpu_op": {"count", "avg_ms", "total_ms"},
}  # fmt: skip
ROUNDING_MS = 1e-6


@pytest.fixture(scope="module")
def profiled(session):
    report, tokens = run_profile(session, PROMPT, N_TOKENS, Sampling(), None)
    assert report.decode.steps >= 1, "the short run must reach decode for these tests"
    return report


@pytest.fixture(scope="module")
def profile_json(profiled):
    return json.loads(json.dumps(to_json(profiled)))  # what a reader of the file gets


@pytest.mark.slow
def test_every_section_is_printed_in_the_seeds_order(profiled):
    text = render_text(profiled)
    positions = [text.index(f"\n{title}\n") for title in SECTIONS]
    assert positions == sorted(positions)
    for line in ("TTFT (time to first token", "TPOT (time per output token", "Preprocessing"):
        assert line in text


def test_dataflow_rows_follow_the_model_and_carry_measured_times(profiled):
    text = render_text(profiled)
    dataflow = text[text.index("END-TO-END DATAFLOW") : text.index("WALL-TIME ATTRIBUTION")]
    prefill_order = ["CPU    tokenize", "CPU    eos_pad", "CPU    embed_lookup",
                     "x decoder layer", "EMU      rms_gemms_rope", "EMU      flash_attn",
                     "EMU      o_ffn", "CPU      kv_cache_extract", "CPU    final_rms_norm",
                     "EMU    lm_head_gemv", "TTFT (prefill wall)", "EMU      rms_gemv_rope",
                     "CPU      kv_append", "EMU      o_gemv_ffn", "TPOT"]  # fmt: skip
    positions = [dataflow.index(row) for row in prefill_order]
    assert positions == sorted(positions)
    ttft_row = next(line for line in dataflow.splitlines() if "TTFT (prefill wall)" in line)
    assert float(ttft_row.split()[-1]) == pytest.approx(profiled.ttft_ms, abs=0.01)


def test_dataflow_rows_add_up_to_ttft_and_tpot(profiled):
    prefill, decode = dataflow_section(profiled).tables
    for table, total in ((prefill, profiled.ttft_ms), (decode, profiled.tpot_ms)):
        rows = [row for row in table.rows if row[0] != "=" and "loop envelope" not in row[1]]
        assert sum(float(row[-1]) for row in rows) == pytest.approx(total, abs=0.01 * len(rows))


def test_json_carries_every_contract_key(profile_json, profiled):
    data = profile_json
    assert CONTRACT["top"] <= set(data)
    assert CONTRACT["prefill"] <= set(data["prefill"])
    assert CONTRACT["decode"] <= set(data["decode"])
    elfs = {"rms_gemms_rope", "flash_attn", "o_ffn", "lm_head_gemv"}
    assert {f"prefill/{e}" for e in elfs} <= set(data["kernels"])
    assert {"decode/rms_gemv_rope", "decode/o_gemv_ffn", "decode/lm_head_gemv"} <= set(
        data["kernels"]
    )
    for key, entry in data["kernels"].items():
        assert re.fullmatch(r"(prefill|decode)/\w+", key)
        assert CONTRACT["kernel"] <= set(entry), key
    assert {"prefill/tokenize", "prefill/kv_cache_extract", "decode/kv_append"} <= set(
        data["cpu_ops"]
    )
    for entry in data["cpu_ops"].values():
        assert CONTRACT["cpu_op"] <= set(entry)
    n_layers = profiled.info.n_layers
    assert data["kernels"]["prefill/o_ffn"]["count"] == n_layers
    assert data["kernels"]["decode/o_gemv_ffn"]["count"] == n_layers * data["decode_tokens"]
    assert len(data["decode"]["per_token_ms"]) == data["decode_tokens"]


def test_phase_walls_reconcile_with_the_recorded_intervals(profile_json, profiled):
    """Recomputed straight from the profiler's records: kernel + CPU + unattributed is
    each phase's wall, the timers never overlap (nothing is counted twice), and every
    record lies inside its phase."""
    profiler, data = profiled.profiler, profile_json
    for name in ("prefill", "decode"):
        walls = [s for s in profiler.spans if s.name == name]
        kernels = [k for k in profiler.kernels if k.phase == name]
        cpu = [c for c in profiler.cpu_ops if c.phase == name]
        wall = sum(s.dur_s for s in walls) * 1e3
        kernel = sum(k.total_s for k in kernels) * 1e3
        cpu_ms = sum(c.dur_s for c in cpu) * 1e3
        steps = len(walls) if name == "decode" else 1
        suffix = "_per_token" if name == "decode" else ""
        phase = data[name]
        assert phase[f"wall_ms{suffix}"] == pytest.approx(wall / steps, abs=ROUNDING_MS)
        assert phase[f"kernel_ms{suffix}"] == pytest.approx(kernel / steps, abs=ROUNDING_MS)
        assert phase[f"cpu_ms{suffix}"] == pytest.approx(cpu_ms / steps, abs=ROUNDING_MS)
        accounted = phase[f"kernel_ms{suffix}"] + phase[f"cpu_ms{suffix}"]
        assert accounted + phase[f"unattributed_ms{suffix}"] == pytest.approx(
            phase[f"wall_ms{suffix}"], abs=ROUNDING_MS
        )
        assert phase[f"unattributed_ms{suffix}"] >= 0
        intervals = sorted([(k.start, k.start + k.total_s) for k in kernels]
                           + [(c.start, c.start + c.dur_s) for c in cpu])  # fmt: skip
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert end <= start, f"{name}: two timers overlap"
        for start, end in intervals:
            assert any(w.start <= start and end <= w.start + w.dur_s for w in walls)
    assert data["ttft_ms"] == data["prefill"]["wall_ms"]
    assert data["tpot_ms"] == pytest.approx(
        sum(data["decode"]["per_token_ms"]) / data["decode_tokens"], abs=ROUNDING_MS
    )


def test_breakdowns_add_up_to_the_phase_totals(profile_json):
    data = profile_json
    for name in ("prefill", "decode"):
        kernels = [v for k, v in data["kernels"].items() if k.startswith(name + "/")]
        ops = [v for k, v in data["cpu_ops"].items() if k.startswith(name + "/")]
        total_kernel = sum(k["count"] * k["avg_ms"] for k in kernels)
        split = sum(k["count"] * (k["write_ms"] + k["run_ms"] + k["read_ms"]) for k in kernels)
        steps = 1 if name == "prefill" else data["decode_tokens"]
        key = "kernel_ms" if name == "prefill" else "kernel_ms_per_token"
        assert total_kernel / steps == pytest.approx(data[name][key], abs=1e-6)
        assert split == pytest.approx(total_kernel, abs=1e-6)
        cpu_key = "cpu_ms" if name == "prefill" else "cpu_ms_per_token"
        assert sum(o["total_ms"] for o in ops) / steps == pytest.approx(data[name][cpu_key])


def test_trace_has_an_event_for_every_kernel_call_nested_in_its_layer(profiled):
    profiler = profiled.profiler
    trace = json.loads(json.dumps(trace_events(profiler)))
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    kernels = [e for e in events if e["cat"] == "kernel"]
    assert len(kernels) == len(profiler.kernels)
    assert len([e for e in events if e["cat"] == "cpu"]) == len(profiler.cpu_ops)

    def bounds(event: dict) -> tuple[int, int]:  # in ns, as Perfetto reads them
        begin = round(event["ts"] * 1000)
        return begin, begin + round(event["dur"] * 1000)

    layers = [bounds(e) + (e["args"]["index"],) for e in events
              if e["cat"] == "span" and e["name"].startswith("layer ")]  # fmt: skip
    segments = [bounds(e) for e in events if e["cat"] == "kernel.segment"]
    for event in kernels:
        begin, end = bounds(event)
        if event["args"]["layer"] is not None:
            inside = [index for lo, hi, index in layers if lo <= begin and end <= hi]
            assert inside == [event["args"]["layer"]]
        parts = [(lo, hi) for lo, hi in segments if begin <= lo and hi <= end]
        assert len(parts) == 3 and parts[0][0] == begin and parts[-1][1] == end


def test_html_draws_the_dataflow_with_measured_times_and_needs_nothing_else(profiled):
    page = render_html(profiled)
    svg = page[page.index("<svg") : page.rindex("</svg>")]
    for step in ("tokenize", "rms_gemms_rope", "flash_attn", "o_ffn", "kv_cache_extract",
                 "lm_head_gemv", "rms_gemv_rope", "kv_append", "o_gemv_ffn"):  # fmt: skip
        assert f">{step}</text>" in page
    assert f"TTFT {profiled.ttft_ms:.1f} ms" in svg
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page


def test_html_has_the_charts_a_legend_the_hot_spot_and_where_the_trace_is(profiled):
    trace = Path("/profiles/run.trace.json")
    page = render_html(profiled, trace)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 5 and any("Roofline" in c for c in captions)
    assert page.count("<svg") == 5 + 2  # the charts and the two dataflows
    for step in ("o_ffn", "lm_head_gemv", "kv_append", "untimed"):
        assert f'<span style="--c:{STEP_COLORS[step]}">{step}' in page
    lead = re.search(r'<p class="lead">(.*?)</p>', page).group(1)
    assert lead.startswith("Largest share: ") and "of the prefill" in lead
    assert str(trace) in page and PERFETTO in page and "Open trace file" in page
    assert "--trace PATH" in render_html(profiled)  # no trace written: how to get one
    # The charts carry their text as text (svg.fonttype none), so a page can be searched.
    assert ">measured (emu)<" in page.replace("\n", "")


def test_the_largest_share_names_the_step_that_takes_most_of_each_phase(profiled):
    text = render_text(profiled)
    sentence = next(line for line in text.splitlines() if line.startswith("Largest share"))
    steps = {name: sum(e.stats.total_ms for e in profiled.elfs_of("prefill")
                       if e.spec.name == name)
             for name in ("rms_gemms_rope", "flash_attn", "o_ffn")}  # fmt: skip
    assert sentence.startswith(f"Largest share: {max(steps, key=steps.get)} takes ")


def test_roofline_of_a_gemm_matches_a_hand_computation(session):
    shape = session.shape
    spec = session.artifacts.load("o_ffn.s64").spec
    gate = next(launch for launch in spec.launches if launch.label == "gemm gate")
    s, e, f = 64, shape.hidden, shape.ffn
    flops = 2 * s * f * e  # [S,E] @ [F,E]^T
    size = {name: spec.arg(name).np_dtype.itemsize for name in ("hn", "w_gate", "g")}
    moved = s * e * size["hn"] + f * e * size["w_gate"] + s * f * size["g"]
    assert roofline.launch_cost(gate) == roofline.Cost(flops, moved)  # as the plan carries it
    rates = roofline.Rates("test", flops_per_s=1e12, bytes_per_s=1e9, source="hand")
    cost = roofline.Cost(flops, moved)
    assert rates.floor_s(cost) == pytest.approx(max(flops / 1e12, moved / 1e9))
    assert rates.bound(cost) == ("compute" if flops / 1e12 > moved / 1e9 else "memory")


def test_roofline_of_the_partitioned_lm_head_counts_each_row_once(session):
    spec = session.artifacts.load("lm_head_gemv").spec
    partitions, rows = spec.arg("logits").shape
    e = spec.arg("x").shape[1]
    # x once, the weights in their stored type (the default model's is Q8_0), f32 logits
    moved = spec.arg("x").nbytes + spec.arg("w_lm").nbytes + partitions * rows * 4
    expected = roofline.Cost(partitions * 2 * rows * e, moved)
    assert roofline.elf_cost(spec) == expected


def test_emu_rates_are_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "rates.json"
    measured = roofline.Rates("emu", 1e10, 1e10, "stand-in measurement")
    monkeypatch.setattr(roofline, "measure_host_rates", lambda: measured)
    assert roofline.device_rates("emu", cache) == measured

    def fail() -> roofline.Rates:
        raise AssertionError("measured again although the cache holds this machine's rates")

    monkeypatch.setattr(roofline, "measure_host_rates", fail)
    assert roofline.device_rates("emu", cache) == measured
    assert roofline.device_rates("npu", cache) is roofline.NPU2_RATES


def test_a_torn_rates_cache_is_measured_again(tmp_path, monkeypatch):
    cache = tmp_path / "rates.json"
    cache.write_text('{"schema": 1, "machine"')
    measured = roofline.Rates("emu", 2e10, 3e10, "stand-in measurement")
    monkeypatch.setattr(roofline, "measure_host_rates", lambda: measured)
    assert roofline.device_rates("emu", cache) == measured
    assert json.loads(cache.read_text())["rates"]["flops_per_s"] == 2e10


@pytest.fixture
def cli_on_test_session(session, monkeypatch):
    """`aierun profile` through the real command; only opening the session is replaced
    (by the already prepared test session), so the run is the production one."""

    def open_prepared(args, profiler):
        monkeypatch.setattr(session, "profiler", profiler)
        return session

    monkeypatch.setattr(command, "open_session", open_prepared)


@pytest.mark.slow
def test_cli_profile_prints_the_report_and_writes_all_three_files_by_default(
    cli_on_test_session, capsys, runtime_home
):
    assert cli.main(["profile", "--n-tokens", "2", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    for title in SECTIONS:
        assert f"\n{title}\n" in out
    found = re.findall(r"^profile (json|trace|html): (.+)$", out, re.MULTILINE)
    written = {kind: Path(path) for kind, path in found}
    assert set(written) == {"json", "trace", "html"}
    for path in written.values():
        assert path.parent == runtime_home / "profiles" and path.name.startswith("profile-")
    data = json.loads(written["json"].read_text())
    assert data["seq_len"] == 128
    assert data["prepare_ms"] is None  # the test session was prepared before recording
    assert json.loads(written["trace"].read_text())["traceEvents"]
    page = written["html"].read_text()
    assert "<svg" in page and str(written["trace"]) in page
    assert f"open the trace at {PERFETTO} (Open trace file)" in out


@pytest.mark.slow
def test_cli_profile_writes_only_the_files_asked_for_and_refuses_an_unwritable_path(
    cli_on_test_session, capsys, tmp_path
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    json_path, html_path = tmp_path / "out.json", blocker / "report.html"
    argv = ["profile", "--n-tokens", "2", "--json", str(json_path), "--html", str(html_path)]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "\nTTFT / TPOT\n" in captured.out  # the report is printed before the files
    assert "could not write the profile html" in captured.err and "--html" in captured.err
    assert json.loads(json_path.read_text())["decode_tokens"] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "out.json"]


def test_a_run_that_never_decodes_still_reports(session, monkeypatch):
    monkeypatch.setattr(session, "profiler", Profiler(device="emu"))
    report, tokens = run_profile(session, PROMPT, 1, Sampling(), None)
    assert report.decode.steps == 0 and len(tokens) <= 1
    text = render_text(report)
    assert "TPOT: n/a" in text
    assert to_json(report)["tpot_ms"] is None
    assert "<svg" in render_html(report)


# -- the page in a browser ------------------------------------------------------------
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def screenshot(page: str, where: Path, height: int = 3000) -> np.ndarray:
    """The page as headless Chromium draws it, 1400 pixels wide: RGB pixels."""
    from PIL import Image

    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if browser is None:
        pytest.skip("no Chromium on PATH: tools/install.sh --dev installs Debian's chromium "
                    "when it runs as root with apt-get")  # fmt: skip
    html, png = where.with_suffix(".html"), where.with_suffix(".png")
    html.write_text(page)
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={png}", f"--window-size=1400,{height}", html.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert png.exists(), result.stderr
    return np.asarray(Image.open(png).convert("RGB"))


def pixels_of(image: np.ndarray, color: str, tolerance: int = 10) -> int:
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(axis=2) <= tolerance).sum())


def test_the_page_renders_in_chromium_with_its_charts(profiled, tmp_path):
    image = screenshot(render_html(profiled), tmp_path / "profile")
    assert image.shape == (3000, 1400, 3)
    # Chart colours only (the dataflow boxes are drawn in other ones): the bars of
    # the prefill's and the decode's largest steps, the npu2 model's bars.
    for color in (STEP_COLORS["o_ffn"], STEP_COLORS["o_gemv_ffn"], MODELED):
        assert pixels_of(image, color) > 2000, color


def test_the_comparison_renders_in_chromium_with_its_chart(two_profiles, tmp_path):
    page = compare.render_html(compare.Comparison(*map(compare.load_run, two_profiles)))
    image = screenshot(page, tmp_path / "compare", height=1200)
    for color in (MEASURED, MODELED):  # B's bars and A's
        assert pixels_of(image, color) > 2000, color


# -- two runs side by side --------------------------------------------------------------
@pytest.fixture
def two_profiles(profile_json, tmp_path) -> tuple[Path, Path]:
    """A: the profiled run. B: the same run three times slower in its kernels, of
    another model, without one CPU step."""
    b = copy.deepcopy(profile_json)
    b["model"] = "Other-Model"
    for entry in b["kernels"].values():
        entry["total_ms"] *= 3
    del b["cpu_ops"]["prefill/eos_pad"]
    paths = tmp_path / "a.json", tmp_path / "b.json"
    for path, data in zip(paths, (profile_json, b), strict=True):
        path.write_text(json.dumps(data))
    return paths


def test_comparison_puts_the_largest_change_first_and_says_what_does_not_match(two_profiles):
    comparison = compare.Comparison(*map(compare.load_run, two_profiles))
    rows = comparison.matched()
    changes = [abs(b - a) for _, a, b in rows]
    assert changes == sorted(changes, reverse=True)
    # B's kernels take 3x A's and its CPU steps the same: A's longest kernel step changes most.
    kernels = [row for row in rows if row[1] > 0 and row[2] == pytest.approx(3 * row[1])]
    largest = max(kernels, key=lambda row: row[1])[0]
    assert rows[0][0] == largest
    assert "prefill/eos_pad" not in {r[0] for r in rows}
    notes = " ".join(comparison.mismatches())
    assert "different models: A SmolLM2-135M-Instruct, B Other-Model" in notes
    assert "only in A: prefill/eos_pad; only in B: none" in notes
    text = compare.render_text(comparison)
    assert f"Largest change: {largest}" in text
    row = next(line for line in text.splitlines() if line.startswith(f"{largest} "))
    assert row.split()[4] == "3.00x"  # step, A, B, B - A, B / A, then the npu2 models
    for line in ("TTFT (prefill wall) ms", "TPOT (decode step wall) ms",
                 "npu2 model TTFT (kernels) ms", "npu2 model TPOT (kernels) ms"):  # fmt: skip
        assert line in text


def test_cli_compare_prints_and_writes_text_and_html(two_profiles, capsys, runtime_home):
    assert cli.main(["profile", "--compare", *map(str, two_profiles)]) == 0
    out = capsys.readouterr().out
    assert "\nPER STEP, LARGEST CHANGE FIRST\n" in out
    written = dict(re.findall(r"^comparison (text|html): (.+)$", out, re.MULTILINE))
    assert set(written) == {"text", "html"}
    text, html = Path(written["text"]), Path(written["html"])
    assert text.parent == runtime_home / "profiles" and text.name.startswith("compare-")
    assert "PER STEP, LARGEST CHANGE FIRST" in text.read_text()
    assert "<svg" in html.read_text() and "different models" in html.read_text()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("plain text", "is not a profile JSON: it is not JSON"),
        ('{"traceEvents": []}', "is a Perfetto trace, not a profile JSON"),
        ("[1, 2]", 'is not a profile JSON: no "schema" key'),
        ('{"schema": 99}', "is a profile JSON of schema 99; this aierun reads schema 1"),
        ('{"schema": 1, "model": "m"}', "is not a whole profile JSON: device, "),
        (None, "cannot read the profile"),
    ],
)
def test_compare_refuses_a_file_that_is_not_a_profile_json(
    content, says, two_profiles, tmp_path, capsys
):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert cli.main(["profile", "--compare", str(two_profiles[0]), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"aierun profile: {bad}" if content else f"aierun profile: cannot read the profile {bad}"
    )
    assert says in err[0]


def test_doit_profile_compare_takes_the_two_files_as_a_variable(two_profiles, tmp_path):
    env = {**os.environ, "AIE_BUILD_DIR": str(tmp_path / "build")}
    result = subprocess.run(
        [sys.executable, "-m", "doit", "profile", "compare=" + ",".join(map(str, two_profiles))],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "PER STEP, LARGEST CHANGE FIRST" in result.stdout
    assert "compile" not in result.stderr  # nothing to build for a comparison
    assert list((tmp_path / "build" / "profiles").glob("compare-*.html"))
