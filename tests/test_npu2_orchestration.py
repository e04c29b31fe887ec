"""The npu2 build orchestration end to end against stand-in `clang++` and `aiecc`
programs (tests/standins), which record their argv and cwd and write placeholder
outputs. mlir-aie is absent here, so every op's IRON design is replaced by a
stand-in that fills tests/fixtures/mlir/launch_template.mlir from the launch."""

from __future__ import annotations

import json
import shutil
import string
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from aiebuild import designs, toolchain
from aiebuild.designs import common
from aiebuild.npu2 import AIECC_FLAGS, PEANO_FLAGS, STITCHED, BuildError, Npu2Target
from aiebuild.specs import model_specs
from aiebuild.stitching import memref_type
from aiebuild.tasks import BuildConfig, compile_all, plan
from aierun.abi import ArgSpec, Launch
from aierun.artifacts import PLAN, ArtifactSet
from aierun.model import Checkpoint

TESTS = Path(__file__).parent
TEMPLATE = string.Template((TESTS / "fixtures" / "mlir" / "launch_template.mlir").read_text())
BUCKETS = (64, 128)


def standin_design(launch: Launch, args: list[ArgSpec]) -> str:
    """IRON-shaped MLIR for one launch, linking the object the registry names."""
    types = ", ".join(memref_type(a) for a in args)
    obj = designs.op_design(launch.op).kernel(launch, args).name
    return TEMPLATE.substitute(
        symbol=f"{launch.op}_{obj.removesuffix('.o')}",  # one symbol per kernel instance
        kernel_types=types,
        object=obj,
        sequence_args=", ".join(f"%arg{i}: {memref_type(a)}" for i, a in enumerate(args)),
    )


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """A fake mlir-aie install and Peano, a copy of kernels_src, a fresh runtime home."""
    peano, install = tmp_path / "peano", tmp_path / "mlir-aie"
    (peano / "bin").mkdir(parents=True)
    (install / "bin").mkdir(parents=True)
    (install / "include" / "aie_api").mkdir(parents=True)
    (install / "include" / "aie_api" / "aie.hpp").write_text("// stand-in\n")
    shutil.copy(TESTS / "standins" / "clang++", peano / "bin" / "clang++")
    shutil.copy(TESTS / "standins" / "aiecc", install / "bin" / "aiecc")
    # Discovery only checks that aie.iron can be found; the designs are stand-ins.
    (tmp_path / "python" / "aie" / "iron").mkdir(parents=True)
    for package in ("aie", "aie/iron"):
        (tmp_path / "python" / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "python"))
    kernels = tmp_path / "kernels_src"
    shutil.copytree(common.KERNELS_SRC, kernels)
    log = tmp_path / "standin.jsonl"
    log.touch()
    monkeypatch.setenv("PEANO_INSTALL_DIR", str(peano))
    monkeypatch.setenv("MLIR_AIE_INSTALL_DIR", str(install))
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("AIERUN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(common, "KERNELS_SRC", kernels)
    for op, entry in list(designs.DESIGNS.items()):
        monkeypatch.setitem(designs.DESIGNS, op, replace(entry, design=standin_design))
    yield {"peano": peano, "install": install, "kernels": kernels, "log": log, "tmp": tmp_path}
    for name in ("aie.iron", "aie"):  # forget the fake package, or a real one stays hidden
        sys.modules.pop(name, None)


def calls(log: Path, start: int = 0) -> list[dict]:
    lines = log.read_text().splitlines()[start:]
    return [json.loads(line) for line in lines]


def config(tmp_path: Path, model_dir: Path) -> BuildConfig:
    return BuildConfig(tmp_path / "build", str(model_dir), BUCKETS, "npu2")


def test_discovery_finds_the_standin_toolchain(standins):
    found = toolchain.discover()
    assert found.usable, found.reason
    assert found.mlir_aie_version == "1.4.0"
    assert found.clang == standins["peano"] / "bin" / "clang++"
    assert found.include == standins["install"] / "include"


def test_an_old_or_incomplete_toolchain_is_refused_with_the_fix(standins, monkeypatch):
    monkeypatch.setenv("STANDIN_AIECC_VERSION", "1.3.2")
    old = toolchain.discover()
    assert not old.usable
    assert "mlir-aie 1.3.2 is not supported" in old.reason and "target=emu" in old.reason
    # An upgrade changes the aiecc binary, which invalidates its cached version probe.
    monkeypatch.setenv("STANDIN_AIECC_VERSION", "1.4.1")
    aiecc = standins["install"] / "bin" / "aiecc"
    aiecc.write_text(aiecc.read_text() + "\n# upgraded\n")
    (standins["peano"] / "bin" / "clang++").unlink()
    no_peano = toolchain.discover()
    assert not no_peano.usable and "no Peano" in no_peano.reason
    assert "PEANO_INSTALL_DIR" in no_peano.reason
    shutil.rmtree(standins["tmp"] / "python" / "aie")
    sys.modules.pop("aie.iron", None)
    sys.modules.pop("aie", None)
    no_iron = toolchain.discover()
    assert not no_iron.usable and "(aie.iron) is not importable" in no_iron.reason


def test_fingerprint_follows_the_compiler_binaries(standins):
    found = toolchain.discover()
    before = toolchain.fingerprint(found)
    assert before["mlir_aie"] == "1.4.0" and len(before["clang_sha256"]) == 64
    clang = standins["peano"] / "bin" / "clang++"
    clang.write_text(clang.read_text() + "\n# another build of the compiler\n")
    after = toolchain.fingerprint(found)
    assert after["clang_sha256"] != before["clang_sha256"]
    assert after["aiecc_sha256"] == before["aiecc_sha256"]


def test_npu2_build_runs_peano_and_aiecc_where_and_how_they_must_run(standins, model_dir):
    cfg = config(standins["tmp"], model_dir)
    manifest = compile_all(cfg)
    target, store, shape, builds = plan(cfg)
    log = calls(standins["log"])
    compiles = [c for c in log if c["tool"] == "clang++"]
    links = [c for c in log if c["tool"] == "aiecc" and c["argv"] != ["--version"]]

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
        assert argv[argv.index("-MD") + 1] == "-MF"
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
        stitched = (Path(call["cwd"]) / STITCHED).read_text()
        assert f"aie.runtime_sequence @{build.spec.name}(" in stitched
        assert stitched.count("aiex.configure") >= len(build.spec.launches)

    # The store entries carry the plan (so npu2 artifacts run on emu) and the ELF.
    artifacts = ArtifactSet.open(manifest)
    assert artifacts.target == "npu2" and artifacts.shape == shape
    for build in builds:
        artifact = artifacts.load(build.spec.instance)
        assert set(artifact.files) == {PLAN, f"{build.spec.instance}.elf", STITCHED}
        assert artifact.meta["kernel"] == f"main:{build.spec.name}"
        assert artifact.meta["arg_order"] == [a.name for a in build.spec.args]


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
    specs = model_specs(Checkpoint(model_dir).shape, BUCKETS)
    users = [s for s in specs if any(launch.op == "gemm" for launch in s.launches)]
    assert 0 < len(users) < len(specs)
    assert rebuilt == {"clang++": 1, "aiecc": len(users)}


def test_a_failing_kernel_compile_names_the_kernel_and_publishes_nothing(
    standins, model_dir, monkeypatch
):
    monkeypatch.setenv("STANDIN_FAIL", "rope.cc")
    cfg = config(standins["tmp"], model_dir)
    with pytest.raises(BuildError, match=r"(?s)Peano for rope\.cc .*stand-in compile error"):
        compile_all(cfg)
    target, store, _, builds = plan(cfg)
    rope_users = [b for b in builds if any(x.op == "rope" for x in b.spec.launches)]
    assert rope_users and not any(store.is_valid(b.key) for b in rope_users)
    assert not any(p.name.startswith(".") for p in target.objects.root.iterdir())


def test_object_cache_refuses_a_corrupt_object(standins, model_dir):
    cfg = config(standins["tmp"], model_dir)
    target, _, _, builds = plan(cfg)
    obj = target.kernel_objects(builds[0].spec)[0]
    path = target.build_object(obj)
    assert target.object_is_valid(obj)
    path.write_bytes(b"garbage")
    assert not target.object_is_valid(obj)
    assert target.build_object(obj).read_bytes() != b"garbage"


@pytest.mark.toolchain
def test_real_toolchain_builds_one_elf(tmp_path, checkpoint):
    found = toolchain.discover()
    if not found.usable:
        pytest.skip(f"needs the NPU toolchain: {found.reason}")
    pytest.importorskip("aie.iron", reason="needs the mlir-aie Python package (aie.iron)")
    spec = next(s for s in model_specs(checkpoint.shape, (64,)) if s.name == "flash_attn")
    target = Npu2Target(tmp_path)
    from aiebuild.store import Store
    from aiebuild.targets import entry_key

    key = entry_key(target, spec, target.fingerprint())
    entry = target.build(spec, key, Store(tmp_path, "npu2"))
    assert (entry / f"{spec.instance}.elf").stat().st_size > 0
