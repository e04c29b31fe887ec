"""The NPU device against a stand-in pyxrt (tests/standins/pyxrt.py), plus one
real-hardware test (marked `npu`) that runs when pyxrt, an NPU and npu2 artifacts
are present.

The stand-in records the XRT call sequence and keeps host mapping and device
memory apart, so the tests see the order of calls, the sync directions, the
context pool and the teardown, not just that nothing crashed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from aierun.abi import BF16, ArgSpec, ElfSpec, Launch, Role
from aierun.devices import open_device
from aierun.devices.npu import (
    CONTEXT_LIMIT_ENV,
    NpuDevice,
    parse_xrt_version,
)
from aierun.errors import DeviceError, UserError

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "standins" / "pyxrt.py"
TO_DEVICE, FROM_DEVICE = "XCL_BO_SYNC_BO_TO_DEVICE", "XCL_BO_SYNC_BO_FROM_DEVICE"


@pytest.fixture
def xrt(monkeypatch, tmp_path):
    """A fresh stand-in pyxrt as `import pyxrt` sees it, and a private runtime home."""
    spec = importlib.util.spec_from_file_location("pyxrt", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pyxrt", module)
    monkeypatch.setenv("AIERUN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CONTEXT_LIMIT_ENV, raising=False)
    return module


def toy_spec(name: str = "toy") -> ElfSpec:
    """Host and device-only arguments interleaved, as the real specs have them."""
    args = (
        ArgSpec("x", (2, 4), "bf16", Role.INPUT),
        ArgSpec("w", (4, 4), "bf16", Role.WEIGHT, "w"),
        ArgSpec("mid", (2, 4), "bf16", Role.INTERMEDIATE),
        ArgSpec("acc", (2, 4), "f32", Role.SCRATCH),
        ArgSpec("y", (2, 4), "f32", Role.OUTPUT),
    )
    launches = (
        Launch("gemm", {"M": 2, "K": 4, "N": 4}, ("x", "w"), ("mid",)),
        Launch("add", {"rows": 2, "cols": 4}, ("mid", "x"), ("y",)),
    )
    return ElfSpec(name, "decode", 0, args, launches)


def artifact_files(tmp_path: Path, spec: ElfSpec) -> dict[str, Path]:
    entry = tmp_path / "entries" / spec.instance
    entry.mkdir(parents=True)
    (entry / "plan.json").write_text("{}")
    (entry / f"{spec.instance}.elf").write_bytes(b"\x7fELF stand-in")
    return {
        "plan.json": entry / "plan.json",
        f"{spec.instance}.elf": entry / f"{spec.instance}.elf",
    }


def bind(device: NpuDevice, spec: ElfSpec) -> dict:
    """One buffer per argument, host-written ones filled (as BufferManager does)."""
    buffers = {a.name: device.alloc(a, f"{spec.instance}:{a.name}") for a in spec.args}
    rng = np.random.default_rng(0)
    for arg in spec.args:
        if arg.role in (Role.INPUT, Role.WEIGHT):
            buffers[arg.name].write(rng.standard_normal(arg.shape).astype(arg.np_dtype))
    return buffers


def loaded(device: NpuDevice, tmp_path: Path, spec: ElfSpec):
    return device.load(spec, artifact_files(tmp_path, spec))


def bo_of(buffer) -> int:
    return buffer.bo.serial


# -- call sequence -------------------------------------------------------------------


def test_load_parses_the_elf_and_creates_the_context_lazily_on_the_first_run(xrt, tmp_path):
    device = NpuDevice()
    spec = toy_spec()
    files = artifact_files(tmp_path, spec)
    elf = device.load(spec, files)
    assert xrt.calls[-1] == ("elf", str(files["toy.elf"]))
    assert not any(call[0] == "hw_context" for call in xrt.calls)

    buffers = bind(device, spec)
    xrt.calls.clear()
    device.run(elf, spec, buffers)
    kernel = spec.kernel_name
    expected_args = [("set_arg", i, bo_of(buffers[a.name])) for i, a in enumerate(spec.args)]
    assert xrt.calls == [
        ("hw_context", str(files["toy.elf"])),
        ("ext.kernel", kernel),
        ("run", kernel),
        *expected_args,
        ("start", kernel),
        ("wait2", kernel),
    ]
    assert kernel == "main:toy"
    device.close()


def test_kernel_arguments_follow_the_abi_order_with_device_only_args_in_place():
    spec = toy_spec()
    assert [a.name for a in spec.kernel_arg_order] == ["x", "w", "mid", "acc", "y"]


def test_a_repeated_call_reuses_its_run_and_a_new_binding_gets_its_own(xrt, tmp_path):
    device = NpuDevice()
    spec = toy_spec()
    elf = loaded(device, tmp_path, spec)
    first, second = bind(device, spec), bind(device, spec)
    device.run(elf, spec, first)
    xrt.calls.clear()
    device.run(elf, spec, first)
    assert xrt.calls == [("start", "main:toy"), ("wait2", "main:toy")]

    xrt.calls.clear()
    device.run(elf, spec, second)
    names = [call[0] for call in xrt.calls]
    assert names == ["run", *["set_arg"] * len(spec.args), "start", "wait2"]
    assert [c[2] for c in xrt.calls if c[0] == "set_arg"] == [
        bo_of(second[a.name]) for a in spec.args
    ]
    device.close()


# -- buffers and syncs -----------------------------------------------------------------


def test_write_syncs_the_bytes_to_the_device_unconverted(xrt):
    device = NpuDevice()
    buffer = device.alloc(ArgSpec("x", (2, 4), "bf16", Role.INPUT), "x")
    assert buffer.host.dtype == BF16 and buffer.host.shape == (2, 4)
    values = (np.arange(8, dtype=np.float32) / 3).astype(BF16).reshape(2, 4)
    xrt.calls.clear()
    buffer.write(values)
    assert xrt.calls == [("sync", bo_of(buffer), TO_DEVICE)]
    assert bytes(buffer.bo.memory) == values.tobytes()
    device.close()


def test_outputs_reach_the_host_only_through_a_sync_from_the_device(xrt, tmp_path):
    device = NpuDevice()
    spec = toy_spec()
    elf = loaded(device, tmp_path, spec)
    buffers = bind(device, spec)
    produced = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    y_index = [a.name for a in spec.kernel_arg_order].index("y")

    def kernel(args: dict) -> None:  # the NPU writes y into device memory
        args[y_index].memory[:] = produced.tobytes()

    xrt.KERNELS["main:toy"] = kernel
    xrt.calls.clear()
    device.run(elf, spec, buffers)
    assert not any(call[0] == "sync" for call in xrt.calls)  # intermediates never move
    assert not buffers["y"].host.any()  # the host mapping is stale until the sync
    np.testing.assert_array_equal(buffers["y"].read(), produced)
    assert xrt.calls[-1] == ("sync", bo_of(buffers["y"]), FROM_DEVICE)
    assert buffers["y"].written
    device.close()


def test_a_run_reading_an_unwritten_input_is_refused_before_starting(xrt, tmp_path):
    device = NpuDevice()
    spec = toy_spec()
    elf = loaded(device, tmp_path, spec)
    buffers = {a.name: device.alloc(a, f"toy:{a.name}") for a in spec.args}
    buffers["x"].write(np.zeros((2, 4), BF16))
    with pytest.raises(DeviceError, match="'w'"):
        device.run(elf, spec, buffers)
    assert not any(call[0] == "start" for call in xrt.calls)
    device.close()


def test_a_failed_run_raises_a_device_error_naming_the_elf(xrt, tmp_path):
    device = NpuDevice()
    spec = toy_spec()
    elf = loaded(device, tmp_path, spec)
    xrt.FAILING.add("main:toy")
    with pytest.raises(DeviceError, match=r"toy: the NPU run of toy\.elf .*ERT_CMD_STATE_TIMEOUT"):
        device.run(elf, spec, bind(device, spec))
    device.close()


# -- the hardware context pool ----------------------------------------------------------


def test_the_lru_evicts_the_oldest_context_and_recreates_it_on_reuse(xrt, tmp_path):
    xrt.CONTEXT_POOL = 2  # a device that went past its limit would fail here
    device = NpuDevice(context_limit=2)
    specs = [toy_spec(name) for name in ("a", "b", "c")]
    elfs = {s.name: loaded(device, tmp_path, s) for s in specs}
    buffers = {s.name: bind(device, s) for s in specs}

    def call(name: str) -> None:
        spec = next(s for s in specs if s.name == name)
        device.run(elfs[name], spec, buffers[name])

    call("a")
    call("b")
    call("a")  # a becomes the most recently used
    b_kernel, b_context = elfs["b"].kernel.serial, elfs["b"].context.serial
    xrt.calls.clear()
    call("c")
    assert device.live_contexts() == ["a", "c"]
    assert ("release", "kernel", b_kernel) in xrt.calls
    assert ("release", "hw_context", b_context) in xrt.calls
    assert xrt.live["hw_context"] == 2

    xrt.calls.clear()
    call("b")
    assert ("hw_context", str(elfs["b"].path)) in xrt.calls
    assert device.live_contexts() == ["c", "b"]
    assert xrt.peak["hw_context"] == 2
    assert not any(c[:2] == ("release", "bo") for c in xrt.calls)  # buffers survive
    np.testing.assert_array_equal(buffers["a"]["x"].host, buffers["a"]["x"].last_source)
    device.close()


def test_the_context_limit_comes_from_the_environment(xrt, monkeypatch):
    monkeypatch.setenv(CONTEXT_LIMIT_ENV, "27")
    device = NpuDevice()
    assert device.context_limit == 27
    device.close()
    monkeypatch.setenv(CONTEXT_LIMIT_ENV, "many")
    with pytest.raises(UserError, match=CONTEXT_LIMIT_ENV):
        NpuDevice()


# -- teardown ---------------------------------------------------------------------------


def test_close_releases_buffers_kernels_contexts_elfs_then_the_device(xrt, tmp_path):
    device = NpuDevice(context_limit=4)
    specs = [toy_spec(name) for name in ("a", "b")]
    for spec in specs:
        elf = loaded(device, tmp_path, spec)
        buffers = bind(device, spec)
        device.run(elf, spec, buffers)
    xrt.calls.clear()
    device.close()
    kinds = [c[1] for c in xrt.calls if c[0] == "release"]
    order = ["run", "bo", "kernel", "hw_context", "elf", "device"]
    assert sorted(set(kinds), key=order.index) == order
    last_of = {kind: max(i for i, k in enumerate(kinds) if k == kind) for kind in order}
    first_of = {kind: kinds.index(kind) for kind in order}
    for earlier, later in zip(order, order[1:], strict=False):
        assert last_of[earlier] < first_of[later], f"{earlier} released after {later}"
    assert xrt.live == {kind: 0 for kind in xrt.created}  # nothing leaked
    with pytest.raises(DeviceError, match="released"):
        _ = buffers["x"].host
    device.close()  # a second close is harmless


def test_the_lock_refuses_a_second_device_in_the_same_home_until_close(xrt):
    first = NpuDevice()
    with pytest.raises(UserError, match="another process holds the NPU"):
        NpuDevice()
    first.close()
    NpuDevice().close()


# -- opening ----------------------------------------------------------------------------


def test_missing_pyxrt_is_a_user_error_pointing_at_xrt_and_emu(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyxrt", None)
    monkeypatch.setenv("AIERUN_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"pyxrt.*--device emu"):
        open_device("npu")


def test_no_npu_is_a_user_error_and_leaves_the_lock_free(xrt):
    xrt.DEVICES = 0
    with pytest.raises(UserError, match="no NPU found"):
        NpuDevice()
    xrt.DEVICES = 1
    NpuDevice().close()


def test_an_xrt_older_than_the_minimum_is_refused(xrt):
    xrt.XRT_VERSION = "2.20.0"
    with pytest.raises(UserError, match="XRT 2.20.0 is too old"):
        NpuDevice()


@pytest.mark.parametrize(
    "text, expected",
    [("2.23.0", (2, 23)), ("2.25.18", (2, 25)), ("202610.2.23.244", (2, 23)), ("dev", None)],
)
def test_xrt_versions_parse_from_plain_and_release_tag_forms(text, expected):
    assert parse_xrt_version(text) == expected


def test_open_device_npu_gives_the_xrt_device_for_npu2_artifacts(xrt):
    device = open_device("npu")
    assert isinstance(device, NpuDevice) and device.targets == ("npu2",)
    device.close()


def test_an_artifact_without_an_elf_file_is_a_user_error(xrt, tmp_path):
    device = NpuDevice()
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(UserError, match=r"toy holds 0 \.elf files"):
        device.load(toy_spec(), {"plan.json": tmp_path / "plan.json"})
    device.close()


# -- the real NPU ------------------------------------------------------------------------

NPU_MANIFEST = ROOT / "build" / "targets" / "npu2" / "manifest.json"


def _real_npu_missing() -> str | None:
    if importlib.util.find_spec("pyxrt") is None:
        return "pyxrt is not importable (install XRT and source /opt/xilinx/xrt/setup.sh)"
    if not Path("/dev/accel").is_dir():
        return "no /dev/accel: the amdxdna NPU driver is not loaded"
    if not NPU_MANIFEST.is_file():
        return "no npu2 artifacts in build/targets/npu2: run `doit compile target=npu2`"
    return None


@pytest.mark.npu
@pytest.mark.skipif(_real_npu_missing() is not None, reason=str(_real_npu_missing()))
def test_real_npu_prefill_agrees_with_the_emulation_and_generates_text(checkpoint):
    from aierun.artifacts import ArtifactSet
    from aierun.devices.emu import EmuDevice
    from aierun.session import Session

    artifacts = ArtifactSet.open(NPU_MANIFEST)
    if artifacts.shape != checkpoint.shape:
        pytest.skip("build/targets/npu2 was compiled for another model than the default one")
    ids = checkpoint.encode_prompt("What is the capital of France?")
    expected = Session(checkpoint, artifacts, EmuDevice()).prefill(ids)
    session = Session(checkpoint, artifacts, NpuDevice())
    try:
        logits = session.prefill(ids)
        cosine = np.dot(logits, expected) / (np.linalg.norm(logits) * np.linalg.norm(expected))
        assert cosine >= 0.99
        assert int(logits.argmax()) in np.argsort(expected)[-5:]
        tokens = list(session.generate("What is the capital of France?", 8))
        assert checkpoint.tokenizer.decode(tokens).strip()
    finally:
        session.close()


def test_read_rows_syncs_only_those_rows(xrt, tmp_path):
    device = NpuDevice()
    spec = toy_spec()
    buffers = bind(device, spec)
    y = buffers["y"]
    y.bo.memory[:] = b"\x07" * len(y.bo.memory)  # the device wrote all rows
    row_bytes = y.spec.nbytes // y.spec.shape[0]
    before = bytes(y.bo.mapped)
    y.read_rows(1, 2)
    after = bytes(y.bo.mapped)
    changed = [i for i in range(len(after)) if after[i] != before[i]]
    assert changed and min(changed) >= row_bytes and max(changed) < 2 * row_bytes
    device.close()


def test_staging_leaves_only_start_and_wait_to_the_run(xrt, tmp_path):
    device = NpuDevice()
    spec = toy_spec()
    elf = loaded(device, tmp_path, spec)
    buffers = bind(device, spec)
    device.stage(elf, spec, buffers)
    assert [call[0] for call in xrt.calls].count("set_arg") == len(spec.args)
    xrt.calls.clear()
    device.run(elf, spec, buffers)
    kernel = spec.kernel_name
    assert xrt.calls == [("start", kernel), ("wait2", kernel)]
    device.close()
