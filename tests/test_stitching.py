"""The stitcher on MLIR fixtures shaped like IRON 1.4 output (tests/fixtures/mlir)."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from string import Template

import pytest

from aiebuild.npu2.stitching import RESET_PAD, ChildModule, StitchError, stitch
from aierun.abi import ArgSpec, Role

FIXTURES = Path(__file__).parent / "fixtures" / "mlir"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def arg(name: str, shape: tuple[int, ...], role: Role, dtype: str = "bf16") -> ArgSpec:
    return ArgSpec(name, shape, dtype, role)


# What IRON 1.4 prints (mlir-aie v1.4.0, db06374), for the fixtures and the stand-in:
# - default symbol names are omitted: `aie.device(npu2) {`, `aie.runtime_sequence(`
#   (AIEOps.td DeviceOp `($sym_name^)?` with default "main"; RuntimeSequenceOp::print
#   skips "sequence");
# - tiles are `aie.logical_tile<CoreTile>(?, ?)`, with the coordinates a design pins,
#   until the placement pass (program.py resolve_program);
# - a shim transfer is one `aie.dma_bd(%buf : T offset = O len = L sizes = [..] strides
#   = [..])` whose len counts the three inner dimensions, the outermost one being the
#   task's repeat_count = sizes[0] - 1 (dialects/aiex.py shim_dma_single_bd_task);
# - `aiex.npu.load_pdi` only under the full-ELF compile arg (program.py, runtime.py);
# - a waited task is awaited, then every task is freed (runtime.py finish_task_group).
_TASK = re.compile(
    r"%(?P<task>\w+) = aiex\.dma_configure_task_for @\w+ \{\n(?P<body>.*?)\n\s*\}"
    r"(?: \{(?P<attrs>[^}]*)\})?\n",
    re.S,
)
_BD = re.compile(
    r"\s*aie\.dma_bd\(%\w+ : memref<[\dx]+\w+> offset = \d+ len = (?P<len>\d+) "
    r"sizes = \[(?P<sizes>[\d, ]+)\] strides = \[[\d, ]+\]\)\n\s*aie\.end"
)
_DECL = re.compile(r"func\.func private @(\w+)\(([^)]*)\)")
_CALL = re.compile(r"func\.call @(\w+)\([^)]*\) : \(([^)]*)\) -> \(\)")


def iron14_problems(text: str, full_elf: bool = False) -> list[str]:
    """How `text` differs from what IRON 1.4 prints (empty when it does not)."""
    problems = []
    if re.search(r"aie\.device\(\w+\) @main\b", text):
        problems.append("names the default device @main")
    if "aie.runtime_sequence @sequence(" in text:
        problems.append("names the default runtime sequence @sequence")
    if "aie.tile(" in text or "aie.logical_tile<CoreTile>(" not in text:
        problems.append("places tiles itself (IRON prints aie.logical_tile<...>(col, row))")
    if ("aiex.npu.load_pdi" in text) != full_elf:
        problems.append(f"load_pdi {'missing under' if full_elf else 'without'} the full-ELF arg")
    tasks = list(_TASK.finditer(text))
    if len(tasks) != text.count("aiex.dma_configure_task_for"):
        problems.append("a DMA task is not one configure block")
    for task in tasks:
        problems += _task_problems(text, task)
    declared = dict(_DECL.findall(text))
    problems += [
        f"func.call @{name} passes ({types}), declared ({declared.get(name)})"
        for name, types in _CALL.findall(text)
        if declared.get(name) != types
    ]
    return problems


def _task_problems(text: str, task: re.Match) -> list[str]:
    name, attrs = task.group("task"), task.group("attrs") or ""
    bd = _BD.fullmatch(task.group("body"))
    if bd is None:
        return [f"%{name}: not one aie.dma_bd of the 1.4 syntax: {task.group('body').strip()}"]
    sizes = [int(size) for size in bd.group("sizes").split(",")]
    problems = []
    if int(bd.group("len")) != math.prod(sizes[-3:]):
        problems.append(f"%{name}: len {bd.group('len')} is not the inner sizes {sizes[-3:]}")
    repeat = re.search(r"repeat_count = (\d+) : i32", attrs)
    if (int(repeat.group(1)) if repeat else 0) != sizes[0] - 1:
        problems.append(f"%{name}: repeat_count is not sizes[0] - 1 = {sizes[0] - 1}")
    awaited = f"aiex.dma_await_task(%{name})" in text
    if awaited != ("issue_token = true" in attrs):
        problems.append(f"%{name}: awaited without issue_token, or the token is never awaited")
    if text.count(f"aiex.dma_free_task(%{name})") != 1:
        problems.append(f"%{name}: not freed exactly once")
    return problems


@pytest.mark.parametrize(
    ("name", "full_elf"),
    [("rmsnorm_4x64.mlir", False), ("gemm_4x64x128.mlir", False), ("gemv_flat.mlir", False),
     ("gemv_partition.mlir", True)],
)  # fmt: skip
def test_fixtures_are_what_iron_1_4_prints(name, full_elf):
    text = Template(fixture(name)).substitute(w_offset=8192, y_offset=128)
    assert iron14_problems(text, full_elf) == []


def test_the_form_check_sees_each_pre_1_4_form():
    norm = fixture("rmsnorm_4x64.mlir")
    bd = "aie.dma_bd(%arg1 : memref<64xbf16> offset = 0 len = 64 sizes = [1, 1, 1, 64] strides = "
    old_forms = {
        "@main": norm.replace("aie.device(npu2) {", "aie.device(npu2) @main {"),
        "@sequence": norm.replace("aie.runtime_sequence(", "aie.runtime_sequence @sequence("),
        "places tiles": norm.replace("aie.logical_tile<CoreTile>(?, ?)", "aie.tile(0, 2)"),
        "1.4 syntax": norm.replace(f"{bd}[0, 0, 0, 1])", "aie.dma_bd(%arg1 : memref<64xbf16>, "
                                   "0, 64, [<size = 64, stride = 1>])"),
        "len 256": norm.replace("256 sizes = [1, 1, 1, 256]", "256 sizes = [4, 1, 1, 64]"),
        "without the full-ELF": norm.replace(
            "      %1 = aiex", "      aiex.npu.load_pdi {device_ref = @main}\n      %1 = aiex"
        ),
        "freed exactly once": norm.replace("      aiex.dma_free_task(%3)\n", ""),
        "passes (memref<64xf32>": norm.replace("(memref<64xf32>, memref<64xbf16>, memref<64xbf16>)"
                                               " attributes", "(memref<64xf32>, memref<64xbf16>, "
                                               "memref<64xbf16>, i32) attributes"),
    }  # fmt: skip
    for expected, text in old_forms.items():
        assert text != norm, expected
        assert any(expected in problem for problem in iron14_problems(text)), expected


# rmsnorm (fp32 x) then a GEMM, with an intermediate between them.
NORM_GEMM_ARGS = (
    arg("x", (4, 64), Role.INPUT, "f32"),
    arg("attn_norm", (64,), Role.WEIGHT),
    arg("xn", (4, 64), Role.INTERMEDIATE),
    arg("wq", (128, 64), Role.WEIGHT),
    arg("q", (4, 128), Role.OUTPUT),
)
NORM = ChildModule("l0_rmsnorm", fixture("rmsnorm_4x64.mlir"), ("x", "attn_norm", "xn"))
GEMM = ChildModule("l1_gemm", fixture("gemm_4x64x128.mlir"), ("xn", "wq", "q"))


def device_block(text: str, name: str) -> str:
    """The text of `aie.device(...) @name { ... }`, by brace matching."""
    start = text.index(f"@{name} {{")
    depth = 0
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"device {name} is not closed")


def test_each_launch_gets_its_own_device_and_main_wraps_them():
    out = stitch([NORM, GEMM], NORM_GEMM_ARGS, "mini").mlir
    assert re.findall(r"aie\.device\(npu2\) @(\w+)", out) == ["l0_rmsnorm", "l1_gemm", "main"]
    assert out.count("{") == out.count("}")
    norm = device_block(out, "l0_rmsnorm")
    # The child's own body is kept: its fifos, core and runtime sequence.
    assert "aie.objectfifo @x_in(" in norm and "func.call @rmsnorm_f32_64(" in norm
    assert "aie.runtime_sequence @sequence(%arg0: memref<4x64xf32>" in norm
    assert "aiex.configure" not in norm


def test_main_takes_every_elf_arg_in_abi_order_and_runs_launches_in_order():
    result = stitch([NORM, GEMM], NORM_GEMM_ARGS, "mini")
    main = device_block(result.mlir, "main")
    assert result.sequence == "mini"
    assert (
        "aie.runtime_sequence @mini(%arg0: memref<4x64xf32>, %arg1: memref<64xbf16>, "
        "%arg2: memref<4x64xbf16>, %arg3: memref<128x64xbf16>, %arg4: memref<4x128xbf16>)"
    ) in main
    runs = re.findall(r"aiex\.configure @(\w+) \{\s*aiex\.run @(\w+)\(([^)]*)\)", main)
    assert runs == [
        ("l0_rmsnorm", "sequence", "%arg0, %arg1, %arg2"),
        ("l1_gemm", "sequence", "%arg2, %arg3, %arg4"),  # the intermediate xn is %arg2
    ]
    assert "(memref<4x64xbf16>, memref<128x64xbf16>, memref<4x128xbf16>)" in main


LM_ARGS = (
    arg("x", (1, 64), Role.INPUT),
    arg("w_lm", (4, 128, 64), Role.WEIGHT),
    arg("logits", (4, 128), Role.OUTPUT, "f32"),
)


def gemv_partition(number: int, partition: int) -> ChildModule:
    """An LM-head partition as its design emits it: whole arguments, the slice offset
    in the DMA patterns (and a kernel declaration spelled with other spacing)."""
    text = Template(fixture("gemv_partition.mlir")).substitute(
        w_offset=partition * 128 * 64, y_offset=partition * 128
    )
    bindings = ("x", f"w_lm[{partition}]", f"logits[{partition}]")
    return ChildModule(f"l{number}_gemv", text, bindings)


def test_child_load_pdis_are_removed():
    """Under the full-ELF compile arg IRON starts each sequence with a load of its own
    device (runtime.py, load_pdi_device_ref); in a stitched ELF only @main loads."""
    children = [gemv_partition(0, 0), gemv_partition(1, 1)]
    assert "aiex.npu.load_pdi {device_ref = @main}" in children[0].mlir
    result = stitch(children, LM_ARGS, "lm_head_gemv")
    assert "load_pdi" not in result.mlir and result.removed_load_pdis == 2
    # The designs' own output (no full-ELF arg) has none to remove.
    assert stitch([NORM, GEMM], NORM_GEMM_ARGS, "mini").removed_load_pdis == 0


def test_multi_line_and_generic_load_pdis_are_removed_whole():
    pretty = "aiex.npu.load_pdi {device_ref = @main}"
    child = gemv_partition(0, 0)
    spelled = child.mlir.replace(pretty, "aiex.npu.load_pdi {\n        device_ref = @main\n      }")
    generic = '"aiex.npu.load_pdi"() {device_ref = @main} : () -> ()'
    spelled = spelled.replace(
        "      aiex.dma_free_task(%3)\n", f"      aiex.dma_free_task(%3)\n      {generic}\n"
    )
    assert spelled.count("load_pdi") == 2  # a pretty op over three lines, a generic one
    result = stitch([replace(child, mlir=spelled)], LM_ARGS, "lm_head_gemv")
    assert "load_pdi" not in result.mlir and "device_ref" not in result.mlir
    assert result.mlir.count("{") == result.mlir.count("}")
    assert "aiex.dma_free_task(%3)\n    }" in result.mlir  # the sequence body is intact


def test_slices_pass_the_whole_argument_and_reshapes_become_identity_casts():
    result = stitch([gemv_partition(0, 1), gemv_partition(1, 3)], LM_ARGS, "lm_head_gemv")
    main = device_block(result.mlir, "main")
    # The partitions take the whole w_lm and logits: no offset or strided layout.
    assert (
        "aiex.run @sequence(%arg0, %arg1, %arg2) : "
        "(memref<1x64xbf16>, memref<4x128x64xbf16>, memref<4x128xf32>)"
    ) in main
    assert "reinterpret_cast" not in main and "strided" not in main
    partition = "aie.dma_bd(%arg1 : memref<4x128x64xbf16> offset = {} len"
    assert partition.format(8192) in device_block(result.mlir, "l0_gemv")
    assert partition.format(24576) in device_block(result.mlir, "l1_gemv")
    # An unnamed IRON sequence is named so that aiex.run can call it.
    assert "aie.runtime_sequence @sequence(%arg0: memref<1x64xbf16>" in result.mlir
    # Both partitions link the same object with the same symbol: nothing renamed.
    assert result.renames == () and result.objects == ("gemv_9a8b7c6d5e.o",)
    # A launch that sees x [1, 64] as memref<64xbf16> gets a view at offset 0.
    flat = ChildModule("l0_gemv", fixture("gemv_flat.mlir"), ("x", "w", "y"))
    args = (arg("x", (1, 64), Role.INPUT), arg("w", (128, 64), Role.WEIGHT),
            arg("y", (128,), Role.OUTPUT, "f32"))  # fmt: skip
    assert (
        "%l0_gemv_a0 = memref.reinterpret_cast %arg0 to offset: [0], sizes: [64], "
        "strides: [1] : memref<1x64xbf16> to memref<64xbf16>"
    ) in stitch([flat], args, "one").mlir


def test_a_slice_bound_to_a_slice_shaped_memref_is_refused():
    child = ChildModule("l0_gemv", fixture("gemv_flat.mlir"), ("x", "w_lm[1]", "logits[1]"))
    with pytest.raises(StitchError, match=r"must take the whole memref<4x128x64xbf16>"):
        stitch([child], LM_ARGS, "lm_head_gemv")
    with pytest.raises(StitchError, match=r"slice 4 of w_lm is out of range"):
        stitch([gemv_partition(0, 4)], LM_ARGS, "lm_head_gemv")


def test_a_symbol_compiled_twice_with_other_parameters_is_renamed():
    other = fixture("gemm_4x64x128.mlir").replace("gemm_0f1e2d3c4b.o", "gemm_ffffffffff.o")
    other = other.replace('{link_with = "', '{ link_with="')  # spacing IRON may vary
    args = (*NORM_GEMM_ARGS, arg("wk", (128, 64), Role.WEIGHT), arg("k", (4, 128), Role.OUTPUT))
    second = ChildModule("l2_gemm", other, ("xn", "wk", "k"))
    result = stitch([NORM, GEMM, second], args, "mini")

    [rename] = result.renames
    assert rename.source == "gemm_ffffffffff.o"
    assert rename.object == "gemm_ffffffffff.l2_gemm.o"
    assert dict(rename.symbols) == {
        f"gemm_{kind}_4x64x64": f"gemm_{kind}_4x64x64__l2_gemm"
        for kind in ("zero_f32", "mac_bf16", "store_bf16")
    }
    renamed = device_block(result.mlir, "l2_gemm")
    assert "func.func private @gemm_mac_bf16_4x64x64__l2_gemm(" in renamed
    assert "func.call @gemm_mac_bf16_4x64x64__l2_gemm(" in renamed
    assert re.search(r"@gemm_mac_bf16_4x64x64[(\s]", renamed) is None
    assert 'link_with="gemm_ffffffffff.l2_gemm.o"' in renamed and "ffffffffff.o" not in renamed
    first = device_block(result.mlir, "l1_gemm")
    assert "@gemm_mac_bf16_4x64x64(" in first and "__" not in first
    assert result.objects == (
        "gemm_0f1e2d3c4b.o",
        "gemm_ffffffffff.l2_gemm.o",
        "rmsnorm_1a2b3c4d5e.o",
    )


def test_an_odd_configure_count_gets_one_more_reset_and_no_configuration():
    single = [ChildModule("l0_gemm", GEMM.mlir, GEMM.bindings)]
    padded = stitch(single, NORM_GEMM_ARGS, "one", pad_odd_configures=True).mlir
    main = device_block(padded, "main")
    # The launch is configured once; the pad configures an empty device, which costs a
    # reset (what Xilinx/mlir-aie#3622 adds) instead of a second full configuration.
    assert re.findall(r"aiex\.configure @(\w+)", main) == ["l0_gemm", RESET_PAD]
    assert main.count("aiex.run") == 1
    assert re.search(rf"aiex\.configure @{RESET_PAD} \{{\s*\}}", main)
    assert re.search(rf"aie\.device\(npu2\) @{RESET_PAD} \{{\s*\}}", padded)
    plain = stitch(single, NORM_GEMM_ARGS, "one").mlir
    assert device_block(plain, "main").count("aiex.configure") == 1 and RESET_PAD not in plain
    even = stitch([NORM, GEMM], NORM_GEMM_ARGS, "two", pad_odd_configures=True).mlir
    assert device_block(even, "main").count("aiex.configure") == 2 and RESET_PAD not in even


@pytest.mark.parametrize(
    ("bindings", "message"),
    [
        (("x", "attn_norm"), "takes 3 arguments but the launch binds 2"),
        (("x", "nope", "xn"), "'nope', which is no ELF argument"),
        (("x", "wq", "xn"), "argument 1 is memref<64xbf16> but binds wq"),
        (("xn", "attn_norm", "xn"), "argument 0 is memref<4x64xf32> but binds xn"),
    ],
)
def test_a_launch_that_does_not_fit_its_elf_is_refused(bindings, message):
    child = ChildModule("l0_rmsnorm", NORM.mlir, bindings)
    with pytest.raises(StitchError, match=re.escape(message)):
        stitch([child], NORM_GEMM_ARGS, "mini")


def test_a_weight_in_gguf_blocks_is_bound_as_the_bytes_iron_types_it():
    # IRON types a numpy uint8 tensor as memref<...xui8>: the host's q4_0 weight
    # [2, 4096] of block bytes binds as the same bytes, viewed flat.
    text = fixture("gemv_flat.mlir").replace("memref<128x64xbf16>", "memref<8192xui8>")
    child = ChildModule("l0_gemv", text, ("x", "w", "y"))
    args = (arg("x", (1, 64), Role.INPUT), arg("w", (2, 4096), Role.WEIGHT, "q4_0"),
            arg("y", (128,), Role.OUTPUT, "f32"))  # fmt: skip
    assert (
        "memref.reinterpret_cast %arg1 to offset: [0], sizes: [8192], strides: [1] : "
        "memref<2x4096xui8> to memref<8192xui8>"
    ) in stitch([child], args, "one").mlir
