"""The npu2 build orchestration end to end against stand-ins (tests/standins): `clang++`
and `aiecc` programs that record their argv and cwd and write placeholder outputs,
and a stand-in `aie.iron` package (tests/standins/iron) through which the real
IRON designs run and print IRON-shaped MLIR. mlir-aie and Peano are absent here."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs
from test_stitching import fixture, iron14_problems

from aiebuild import ops
from aiebuild.npu2.stitching import RESET_PAD
from aiebuild.npu2.target import (
    AIECC_FLAGS,
    LOCK,
    PEANO_FLAGS,
    STITCHED,
    BuildError,
    Npu2Target,
    collect_objects,
    needs_reset_pad,
    toolchain,
)
from aiebuild.ops import common, gemv
from aiebuild.specs import GEMM_MMA, model_specs
from aiebuild.targets import EmuTarget
from aiebuild.tasks import BuildConfig, compile_all, compile_tasks, plan, select_target
from aierun.abi import BF16
from aierun.artifacts import PLAN, ArtifactSet
from aierun.errors import UserError
from aierun.files import publish_dir
from aierun.model import ModelShape

TESTS = Path(__file__).parent
ROOT = TESTS.parent
IRON_STANDIN = TESTS / "standins" / "iron"
BUCKETS = (64,)  # one prefill bucket: every ELF kind, half the work of two


def _forget_iron() -> None:
    for name in [m for m in sys.modules if m == "aie" or m.startswith("aie.")]:
        sys.modules.pop(name)
    importlib.invalidate_caches()


def install_program(source: Path, target: Path) -> None:
    """A stand-in program run by this interpreter (it imports the project's dependencies)."""
    _, body = source.read_text().split("\n", 1)
    target.write_text(f"#!{sys.executable}\n{body}")
    target.chmod(0o755)


def set_wheel_version(install: Path, version: str) -> None:
    """The metadata of the mlir_aie wheel that `install` (its `mlir_aie` directory) is."""
    for old in install.parent.glob("mlir_aie*.dist-info"):
        shutil.rmtree(old)
    info = install.parent / f"mlir_aie-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mlir_aie\nVersion: {version}\n")
    (info / "top_level.txt").write_text("mlir_aie\n")


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """A fake mlir-aie wheel install (site-packages/mlir_aie and its 1.4.0 metadata) and
    Peano, the stand-in aie.iron on sys.path, a copy of kernels_src, a fresh runtime home."""
    peano, install = tmp_path / "peano", tmp_path / "site-packages" / "mlir_aie"
    (peano / "bin").mkdir(parents=True)
    (install / "bin").mkdir(parents=True)
    (install / "include" / "aie_api").mkdir(parents=True)
    (install / "include" / "aie_api" / "aie.hpp").write_text("// stand-in\n")
    install_program(TESTS / "standins" / "clang++", peano / "bin" / "clang++")
    install_program(TESTS / "standins" / "aiecc", install / "bin" / "aiecc")
    set_wheel_version(install, "1.4.0")
    _forget_iron()
    monkeypatch.syspath_prepend(str(IRON_STANDIN))
    kernels = tmp_path / "kernels_src"
    shutil.copytree(common.KERNELS_SRC, kernels)
    log = tmp_path / "standin.jsonl"
    log.touch()
    env = {
        "PEANO_INSTALL_DIR": str(peano),
        "MLIR_AIE_INSTALL_DIR": str(install),
        "STANDIN_LOG": str(log),
        "AIERUN_HOME": str(tmp_path / "home"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(common, "KERNELS_SRC", kernels)
    yield {"peano": peano, "install": install, "kernels": kernels, "log": log, "tmp": tmp_path}
    _forget_iron()  # or the stand-in would hide a real mlir-aie in later tests


def calls(log: Path, start: int = 0, tool: str | None = None) -> list[dict]:
    found = [json.loads(line) for line in log.read_text().splitlines()[start:]]
    return [c for c in found if tool is None or c["tool"] == tool]


def elf_name(aiecc_call: dict) -> str:
    return next(a for a in aiecc_call["argv"] if a.startswith("--full-elf-name=")).split("=")[1]


def config(tmp_path: Path, model_dir: Path, buckets=BUCKETS) -> BuildConfig:
    return BuildConfig(tmp_path / "build", str(model_dir), tuple(buckets), "npu2")


def users(builds, op: str) -> list:
    return [b for b in builds if any(launch.op == op for launch in b.spec.launches)]


# -- toolchain discovery --------------------------------------------------------------


def test_discovery_finds_the_standin_toolchain(standins):
    found = toolchain.discover()
    assert found.usable, found.reason
    assert found.mlir_aie_version == "1.4.0"  # the install's wheel metadata: aiecc has none
    assert found.peano_version == "19.0.0"  # `clang++ --version`, not a placeholder
    assert found.clang == standins["peano"] / "bin" / "clang++"
    assert found.include == standins["install"] / "include"


def test_auto_target_is_npu2_with_a_toolchain_and_emu_without(standins, monkeypatch):
    with capture_logs() as logs:
        assert select_target("auto") == "npu2"
    assert [e["target"] for e in logs if e["event"] == "compile.target"] == ["npu2"]
    monkeypatch.delenv("MLIR_AIE_INSTALL_DIR")
    monkeypatch.setenv("PATH", str(standins["tmp"] / "empty"))
    with capture_logs() as logs:
        assert select_target("auto") == "emu"
    assert [e["target"] for e in logs if e["event"] == "compile.target"] == ["emu"]


def test_an_old_or_incomplete_toolchain_is_refused_with_the_fix(standins, monkeypatch):
    set_wheel_version(standins["install"], "1.3.2")
    old = toolchain.discover()
    assert not old.usable
    assert "mlir-aie 1.3.2 is not supported" in old.reason and "target=emu" in old.reason
    set_wheel_version(standins["install"], "1.4.1")
    assert toolchain.discover().usable
    (standins["peano"] / "bin" / "clang++").unlink()
    no_peano = toolchain.discover()
    assert not no_peano.usable and "no Peano" in no_peano.reason
    assert "PEANO_INSTALL_DIR" in no_peano.reason
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(IRON_STANDIN)])
    _forget_iron()
    no_iron = toolchain.discover()
    assert not no_iron.usable and "(aie.iron) is not importable" in no_iron.reason


def test_a_source_build_without_wheel_metadata_is_refused_naming_where_it_looked(standins):
    for info in standins["install"].parent.glob("mlir_aie*.dist-info"):
        shutil.rmtree(info)
    found = toolchain.discover()
    assert not found.usable
    assert "cannot tell the mlir-aie version" in found.reason
    where = f"wheel metadata (mlir_aie-<version>.dist-info) beside {standins['install']}"
    assert where in found.reason
    assert "only a git SHA" in found.reason and "target=emu" in found.reason


def test_fingerprint_follows_the_compiler_binaries(standins, monkeypatch):
    found = toolchain.discover()
    before = toolchain.fingerprint(found)
    assert before["mlir_aie"] == "1.4.0" and len(before["clang_sha256"]) == 64
    assert before["aiecc_git_sha"] == "db06374df0000000"  # from the `aiecc --version` banner
    # A rebuilt aiecc of another commit with the same wheel version is another compiler.
    monkeypatch.setenv("STANDIN_AIECC_SHA", "af819a802f4e")
    aiecc = standins["install"] / "bin" / "aiecc"
    aiecc.write_text(aiecc.read_text() + "\n# rebuilt\n")
    rebuilt = toolchain.fingerprint(found)
    assert rebuilt["aiecc_git_sha"] == "af819a802f4e"
    assert rebuilt["aiecc_sha256"] != before["aiecc_sha256"]
    before = rebuilt
    clang = standins["peano"] / "bin" / "clang++"
    clang.write_text(clang.read_text() + "\n# another build of the compiler\n")
    after = toolchain.fingerprint(found)
    assert after["clang_sha256"] != before["clang_sha256"]
    assert after["aiecc_sha256"] == before["aiecc_sha256"]


@pytest.mark.parametrize("version", ["1.4.0", "1.4.3"])
def test_aiecc_compiles_cores_with_peano_on_every_1_4_release(standins, version):
    """1.4.0 defaults to Chess, 1.4.1.dev46+ to Peano and no longer knows --no-xchesscc:
    the flags pick Peano on both (the stand-in follows each release's option rules)."""
    set_wheel_version(standins["install"], version)
    work = standins["tmp"] / "work"
    work.mkdir()
    (work / STITCHED).write_text("module {\n}\n")
    aiecc = str(standins["install"] / "bin" / "aiecc")
    Npu2Target._run([aiecc, *AIECC_FLAGS, "--full-elf-name=x.elf", STITCHED], work, "aiecc")
    assert (work / "x.elf").is_file()
    with pytest.raises(BuildError, match="require aietools"):  # the release's default
        Npu2Target._run([aiecc, "--get-full-elf", "--full-elf-name=y.elf", "--xchesscc",
                         STITCHED], work, "aiecc")  # fmt: skip


@pytest.mark.parametrize(
    ("version", "padded"),
    [("1.4.0", True), ("1.4.3.dev30+gdeadbee", True), ("1.4.3.dev31+gaf819a8", False),
     ("1.4.3", False), ("1.5.0", False)],
)  # fmt: skip
def test_the_reset_pad_is_added_only_where_aiecc_lacks_it(standins, model_dir, version, padded):
    set_wheel_version(standins["install"], version)
    assert needs_reset_pad(version) == padded
    _, _, _, builds = plan(config(standins["tmp"], model_dir))
    spec = next(b.spec for b in builds if len(b.spec.launches) % 2)  # e.g. flash_attn
    stitched = Npu2Target().stitch(spec, standins["tmp"]).mlir
    configures = re.findall(r"aiex\.configure @(\w+)", stitched)
    assert configures[-1] == RESET_PAD if padded else RESET_PAD not in configures
    assert len(configures) == len(spec.launches) + padded


# -- plan-time checks: tiling and core memory -------------------------------------------

LLAMA_1B = ModelShape(
    n_layers=16, hidden=2048, n_heads=32, n_kv_heads=8, head_dim=64, ffn=8192, vocab=128256,
    rms_eps=1e-5, rope_theta=500000.0, rope_scaling=None, tie_embeddings=True,
    max_positions=131072,
)  # fmt: skip


def test_untileable_buckets_are_refused_at_plan_time(standins, model_dir):
    with pytest.raises(
        UserError, match=r"prefill buckets \[80\] are not multiples of 32.*buckets=96"
    ):
        plan(config(standins["tmp"], model_dir, (80,)))
    assert calls(standins["log"]) == []  # nothing was compiled (each rule: tests/test_rules.py)


def test_kernel_parameters_are_prefixed_macros(standins, checkpoint):
    for spec in model_specs(checkpoint.shape, BUCKETS):
        for obj in ops.kernel_objects(spec):
            for flag in obj.flags():
                assert re.fullmatch(r"-DAIEK_[A-Z0-9_]+=\S+", flag), flag


# -- the build ----------------------------------------------------------------------


def test_npu2_build_runs_peano_and_aiecc_where_and_how_they_must_run(standins, model_dir):
    cfg = config(standins["tmp"], model_dir)
    manifest = compile_all(cfg)
    target, store, shape, builds = plan(cfg)
    compiles = calls(standins["log"], tool="clang++")
    links = calls(standins["log"], tool="aiecc")

    # One Peano run per distinct kernel object, shared by every ELF that links it.
    objects = {o for b in builds for o in target.kernel_objects(b.spec)}
    assert len(compiles) == len(objects) < sum(len(b.spec.launches) for b in builds)
    include = f"-I{standins['install'] / 'include'}"
    for call in compiles:
        argv = call["argv"]
        assert argv[: len(PEANO_FLAGS)] == list(PEANO_FLAGS) and include in argv
        obj = next(o for o in objects if argv[argv.index("-o") + 1] == o.name)
        assert all(flag in argv for flag in obj.flags())
        assert argv[argv.index("-c") + 1] == str(standins["kernels"] / obj.source.name)
        assert Path(call["cwd"]).parent == target.objects.root  # compiled in a staging dir

    # One aiecc run per ELF, in a directory holding the stitched MLIR and its objects.
    assert sorted(Path(c["argv"][-1]).name for c in links) == [STITCHED] * len(builds)
    by_elf = {next(a for a in c["argv"] if a.startswith("--full-elf-name=")): c for c in links}
    for build in builds:
        call = by_elf[f"--full-elf-name={build.spec.instance}.elf"]
        assert all(flag in call["argv"] for flag in AIECC_FLAGS)
        assert f"--peano={standins['peano']}" in call["argv"]
        linked = {o.name for o in target.kernel_objects(build.spec)}
        assert linked <= set(call["files"]) and STITCHED in call["files"]
        assert not Path(call["cwd"]).exists()  # the work directory goes on success

    # The store entries carry the plan (so npu2 artifacts run on emu), the ELF and the
    # stitched MLIR: one configure per launch, padded to an even count, no load_pdi.
    artifacts = ArtifactSet.open(manifest)
    assert artifacts.target == "npu2" and artifacts.shape == shape
    for build in builds:
        artifact = artifacts.load(build.spec.instance)
        assert set(artifact.files) == {PLAN, f"{build.spec.instance}.elf", STITCHED}
        assert artifact.meta["kernel"] == f"main:{build.spec.name}"
        assert artifact.meta["arg_order"] == [a.name for a in build.spec.args]
        stitched = (store.entry(build.key) / STITCHED).read_text()
        launches = len(build.spec.launches)
        assert stitched.count("aiex.configure") == launches + launches % 2
        assert stitched.count("aiex.run") == launches and "load_pdi" not in stitched
        assert f"aie.runtime_sequence @{build.spec.name}(" in stitched


def test_second_build_is_all_cache_hits_and_one_kernel_edit_rebuilds_its_users(standins, model_dir):
    cfg = config(standins["tmp"], model_dir)
    compile_all(cfg)
    first = len(calls(standins["log"]))
    compile_all(cfg)
    assert calls(standins["log"], first) == []  # not even a version probe

    gemm = standins["kernels"] / "gemm.cc"
    gemm.write_text(gemm.read_text() + "\n// a changed kernel\n")
    compile_all(cfg)
    rebuilt = Counter(c["tool"] for c in calls(standins["log"], first))
    _, _, _, builds = plan(cfg)
    assert 0 < len(users(builds, "gemm")) < len(builds)
    gemm_objects = {ops.kernel_object(b.spec, launch) for b in builds
                    for launch in b.spec.launches if launch.op == "gemm"}  # fmt: skip
    # One per matmul mode in specs.GEMM_MMA (every bucket here tiles M by 64).
    assert len(gemm_objects) == len(set(GEMM_MMA.values()))
    assert rebuilt == {"clang++": len(gemm_objects), "aiecc": len(users(builds, "gemm"))}


def test_a_design_parameter_rebuilds_only_its_users_and_the_common_header_everything(
    standins, model_dir, monkeypatch
):
    cfg = config(standins["tmp"], model_dir)
    compile_all(cfg)
    _, _, _, builds = plan(cfg)
    start = len(calls(standins["log"]))
    # Another -D value of the GEMV kernel, in what its design links and what is built.
    tuned = gemv.kernel

    def retuned(launch, args):
        obj = tuned(launch, args)
        return replace(obj, params=(*obj.params, ("UNROLL", 2)))

    monkeypatch.setattr(gemv, "kernel", retuned)
    monkeypatch.setitem(ops.OPS, "gemv", replace(ops.OPS["gemv"], kernel=retuned))
    compile_all(cfg)
    relinked = {elf_name(c) for c in calls(standins["log"], start, "aiecc")}
    assert relinked == {f"{b.spec.instance}.elf" for b in users(builds, "gemv")}
    assert 0 < len(relinked) < len(builds)

    start = len(calls(standins["log"]))
    header = standins["kernels"] / "aie_kernel_common.h"
    header.write_text(header.read_text() + "\n// shared by every kernel\n")
    compile_all(cfg)
    assert len(calls(standins["log"], start, "aiecc")) == len(builds)


def test_the_content_key_covers_the_abi_rule_and_flags_not_npu2_py_bytes(standins, model_dir):
    _, _, _, builds = plan(config(standins["tmp"], model_dir))
    sources = Npu2Target().sources(builds[0].spec)
    assert "aierun/abi.py" in sources and "aiebuild/npu2/target.py" not in sources
    assert not any(label.startswith("aierun/devices") for label in sources)
    assert "aiebuild/npu2/target.py:flags" in sources


def test_no_content_key_covers_the_time_model(standins, model_dir):
    """The modeled npu2 time is the manifest's, beside the artifacts: editing the time
    model (or the rules check) rebuilds no ELF of either target."""
    _, _, _, builds = plan(config(standins["tmp"], model_dir))
    time_model = ("aiebuild/array/timing.py", "aiebuild/array/core_model.py",
                  "aiebuild/array/kernel_counts.py", "aiebuild/placed.py",
                  "aiebuild/array/rules.py")  # fmt: skip
    for build in builds:
        for target in (Npu2Target(), EmuTarget()):
            assert not set(time_model) & set(target.sources(build.spec)), target.name


def test_a_failing_kernel_compile_names_the_kernel_and_publishes_nothing(
    standins, model_dir, monkeypatch
):
    monkeypatch.setenv("STANDIN_FAIL", "rope.cc")
    cfg = config(standins["tmp"], model_dir)
    with pytest.raises(BuildError, match=r"(?s)Peano for rope\.cc .*stand-in compile error"):
        compile_all(cfg)
    target, store, _, builds = plan(cfg)
    rope_users = users(builds, "rope")
    assert rope_users and not any(store.is_valid(b.key) for b in rope_users)
    assert not any(p.name.startswith(".") and p.name != LOCK for p in target.objects.root.iterdir())


def test_a_failing_link_keeps_its_work_directory_and_says_where(standins, model_dir):
    aiecc = standins["install"] / "bin" / "aiecc"
    aiecc.write_text(
        aiecc.read_text().replace("mlir = Path(", "sys.exit('link error')\nmlir = Path(")
    )
    with pytest.raises(BuildError, match=r"aiecc for .* in (\S+) \(kept for inspection\)") as err:
        compile_all(config(standins["tmp"], model_dir))
    kept = Path(re.search(r" in (\S+) \(kept", str(err.value)).group(1))
    assert (kept / STITCHED).is_file()


def test_a_missing_binary_is_a_build_error_naming_it(tmp_path):
    missing = tmp_path / "bin" / "clang++"
    with pytest.raises(BuildError, match=re.escape(f"could not start {missing}")):
        Npu2Target._run([str(missing), "--version"], tmp_path, "Peano for x.cc")


def test_object_cache_refuses_a_corrupt_object_and_keeps_a_concurrent_publish(standins, model_dir):
    target, _, _, builds = plan(config(standins["tmp"], model_dir))
    obj = target.kernel_objects(builds[0].spec)[0]
    path = target.build_object(obj)
    assert target.object_is_valid(obj)
    path.write_bytes(b"garbage")
    assert not target.object_is_valid(obj)
    good = target.build_object(obj).read_bytes()
    assert good != b"garbage"
    # Another process published the same object first: the later publish keeps it.
    key = target.object_key(obj)
    staging = target.objects.root / ".late"
    staging.mkdir()
    valid = lambda _: target.objects.path(key, obj) is not None  # noqa: E731
    assert not publish_dir(staging, target.objects.entry(key), valid)
    assert target.build_object(obj).read_bytes() == good and not staging.exists()


def test_object_tasks_are_up_to_date_while_their_elfs_are_built(standins, model_dir):
    cfg = config(standins["tmp"], model_dir)
    compile_all(cfg)
    target, _, _, builds = plan(cfg)
    shutil.rmtree(target.objects.root)
    tasks = {t["name"]: t for t in compile_tasks(cfg)}
    objects = [t for name, t in tasks.items() if name.startswith("obj-")]
    assert objects and all(t["uptodate"][0]() for t in objects)
    # Once an ELF that links them is gone, its objects are due again.
    _, store, _, _ = plan(cfg)
    shutil.rmtree(store.entry(builds[0].key))
    due = {t["name"] for t in objects if not t["uptodate"][0]()}
    assert due == {
        f"obj-{o.name.removesuffix('.o')}" for o in target.kernel_objects(builds[0].spec)
    }


def test_garbage_collection_keeps_exactly_the_objects_kept_elfs_link(standins, model_dir):
    cfg = config(standins["tmp"], model_dir)
    compile_all(cfg)
    target, store, _, builds = plan(cfg)
    stale = target.objects.root / ("0" * 64)  # an object no kept ELF links
    stale.mkdir()
    removed = collect_objects(cfg.home, [store.entry(b.key) for b in builds])
    assert removed == [stale.name]
    kept = {p.name for p in target.objects.root.iterdir()} - {LOCK}
    assert kept == {target.object_key(o) for b in builds for o in target.kernel_objects(b.spec)}


# -- doit, as a user runs it ------------------------------------------------------------


def doit(checkout: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doit", *args], cwd=checkout, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip


def test_doit_compile_for_npu2_in_parallel_rebuilds_only_what_changed(standins, model_dir):
    checkout = standins["tmp"] / "checkout"  # a copy whose sources the test may edit
    for part in ("aiebuild", "aierun", "kernels_src"):
        shutil.copytree(ROOT / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dodo.py", checkout / "dodo.py")
    env = {
        **os.environ,
        "AIE_BUILD_DIR": str(standins["tmp"] / "build"),
        "PYTHONPATH": os.pathsep.join([str(checkout), str(IRON_STANDIN)]),
    }
    args = ("compile", "target=npu2", f"model={model_dir}", "buckets=64")
    done = doit(checkout, env, *args)
    assert done.returncode == 0, done.stderr
    elfs = len(calls(standins["log"], tool="aiecc"))
    # Three prefill ELFs for one bucket, the attention of a later chunk, three decode ELFs.
    assert elfs == 7

    start = len(calls(standins["log"]))
    design = checkout / "aiebuild" / "ops" / "gemv.py"
    design.write_text(design.read_text() + "\n# an edited design\n")
    done = doit(checkout, env, "-n", "2", *args)
    assert done.returncode == 0, done.stderr
    relinked = sorted(elf_name(c) for c in calls(standins["log"], start, "aiecc"))
    assert relinked == ["lm_head_gemv.elf", "o_gemv_ffn.elf", "rms_gemv_rope.elf"]
    assert calls(standins["log"], start, "clang++") == []  # the kernels did not change


# -- the stand-in aie.iron: the recorded model and a printer ----------------------------


def rmsnorm_like_the_fixture() -> str:
    """tests/fixtures/mlir/rmsnorm_4x64.mlir's program, built with the stand-in."""
    from aie.helpers.taplib import TensorAccessPattern
    from aie.iron import Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import NPU2

    x_row, w_row, y_row = (common.tensor((64,), np.dtype(t)) for t in (np.float32, BF16, BF16))
    x_in = ObjectFifo(x_row, name="x_in")
    w_in = ObjectFifo(w_row, depth=1, name="w_in")
    y_out = ObjectFifo(y_row, name="y_out")
    norm = Kernel("rmsnorm_f32_64", "rmsnorm_1a2b3c4d5e.o", [x_row, w_row, y_row])

    def core(x, w, y, rmsnorm):
        weight = w.acquire(1)
        for _ in range_(4):
            values, result = x.acquire(1), y.acquire(1)
            rmsnorm(values, weight, result)
            x.release(1)
            y.release(1)
        w.release(1)

    def sequence(x, w, y, x_fill, w_fill, y_drain):
        rows = TensorAccessPattern((4, 64), 0, [1, 1, 1, 256], [0, 0, 0, 1])
        x_fill.fill(x, tap=rows)
        w_fill.fill(w, tap=TensorAccessPattern((64,), 0, [1, 1, 1, 64], [0, 0, 0, 1]))
        y_drain.drain(y, tap=rows, wait=True)

    worker = Worker(core, [x_in.cons(), w_in.cons(), y_out.prod(), norm])
    host = [common.tensor((4, 64), np.dtype(np.float32)), w_row, common.tensor((4, 64), BF16)]
    runtime = Runtime(sequence, [*host, x_in.prod(), w_in.prod(), y_out.cons()])
    return str(Program(NPU2(), runtime, workers=[worker]).resolve_program())


def test_the_standin_prints_a_program_as_iron_1_4_does(standins):
    assert rmsnorm_like_the_fixture() == fixture("rmsnorm_4x64.mlir")


@pytest.mark.parametrize(
    ("model", "buckets"), [("SmolLM2-135M", BUCKETS), ("Llama-3.2-1B", (2048,))]
)
def test_every_design_prints_iron_1_4_forms_with_loops(standins, checkpoint, model, buckets):
    """Through the stand-in, every launch prints as IRON 1.4 would, and its core
    bodies keep their loops (an unrolled body overflows the 16 KiB program memory)."""
    shape = checkpoint.shape if model == "SmolLM2-135M" else LLAMA_1B
    for spec in model_specs(shape, buckets):
        for launch in spec.launches:
            text = ops.mlir(spec, launch)
            assert iron14_problems(text) == [], f"{spec.instance} {launch.op}"
            cores = text.split(" = aie.core(")[1:]
            assert cores and max(core.count("func.call") for core in cores) <= 4, launch.op
