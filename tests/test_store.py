"""The artifact store: content keys decide what is rebuilt, corrupt entries are
rebuilt, garbage collection keeps what a manifest uses, publishing is safe across
processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aiebuild import cache_command
from aiebuild.specs import model_specs
from aiebuild.store import LOCK, Store
from aiebuild.targets import EmuTarget
from aiebuild.tasks import BuildConfig, compile_all, compile_tasks
from aierun.artifacts import ArtifactSet, verify_entry
from aierun.errors import UserError
from aierun.model import Checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """The ELF instances the emu target builds, in order."""
    calls: list[str] = []
    original = EmuTarget.build

    def counting(self, spec, key, store):
        calls.append(spec.instance)
        return original(self, spec, key, store)

    monkeypatch.setattr(EmuTarget, "build", counting)
    return calls


def compile_into(home: Path, model: Path, buckets=(64,)) -> ArtifactSet:
    return ArtifactSet.open(compile_all(BuildConfig(home, str(model), tuple(buckets), "emu")))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_second_compile_builds_nothing(tmp_path, model_dir, built):
    artifacts = compile_into(tmp_path, model_dir)
    assert sorted(built) == sorted(artifacts.instances)
    built.clear()
    again = compile_into(tmp_path, model_dir)
    assert built == []
    assert again.manifest == artifacts.manifest


def test_corrupt_entry_is_detected_and_rebuilt(tmp_path, model_dir, built):
    artifacts = compile_into(tmp_path, model_dir)
    victim = "o_ffn.s64"
    key = artifacts.manifest["elfs"][victim]
    flip_byte(artifacts.store / key / "plan.json")

    store = Store(tmp_path, "emu")
    assert not store.is_valid(key)
    config = BuildConfig(tmp_path, str(model_dir), (64,), "emu")
    stale = {t["name"] for t in compile_tasks(config) if not all(u() for u in t["uptodate"])}
    assert stale == {victim}  # doit reruns exactly the corrupt ELF's task

    built.clear()
    compile_into(tmp_path, model_dir)
    assert built == [victim]
    verify_entry(artifacts.store / key)


@pytest.mark.parametrize("change", ["bucket set", "rms_norm_eps"])
def test_changed_spec_parameter_rebuilds_exactly_the_affected_elfs(
    tmp_path, model_dir, built, change
):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model, symlinks=True)
    before = compile_into(tmp_path, model, buckets=(64,))
    buckets = (64, 128) if change == "bucket set" else (64,)
    if change == "rms_norm_eps":
        config = json.loads((model / "config.json").read_text())
        config["rms_norm_eps"] = 1e-6
        (model / "config.json").write_text(json.dumps(config))
    specs = model_specs(Checkpoint(model).shape, buckets)
    if change == "bucket set":
        # The new bucket's ELFs, a later chunk's attention (now after 128 positions), and
        # o_gemv_ffn: its KV cache holds twice the largest bucket.
        new = {s.instance for s in specs} - set(before.instances)
        affected = {s.instance for s in specs if s.bucket == 128} | new | {"o_gemv_ffn"}
    else:
        # Every ELF that normalizes: by an rmsnorm launch or a GEMV's RMSNorm prologue.
        affected = {s.instance for s in specs if any("eps" in x.params for x in s.launches)}
    assert 0 < len(affected) < len(specs)

    built.clear()
    after = compile_into(tmp_path, model, buckets=buckets)
    assert sorted(built) == sorted(affected)
    unchanged = set(before.instances) & set(after.instances) - affected
    assert all(before.manifest["elfs"][i] == after.manifest["elfs"][i] for i in unchanged)


def test_gc_removes_unreferenced_entries_and_debris_only(tmp_path, model_dir):
    wide = compile_into(tmp_path, model_dir, buckets=(64, 128))
    narrow = compile_into(tmp_path, model_dir, buckets=(64,))  # now the manifest's shape
    orphans = set(wide.manifest["elfs"].values()) - set(narrow.manifest["elfs"].values())
    emu = Store(tmp_path, "emu")
    debris = [emu.root / ".0123456789ab.x1y2", emu.root / ".trash.z9"]
    for path in debris:
        (path / "half").mkdir(parents=True)
    npu2 = Store(tmp_path, "npu2")  # another target: its own manifest protects its entries
    kept, dropped = "a" * 64, "b" * 64
    for key in (kept, dropped):
        npu2.publish(key, {"instance": "lm_head_gemv"}, {"plan.json": b"{}"})
    (tmp_path / "targets" / "npu2").mkdir(parents=True)
    (tmp_path / "targets" / "npu2" / "manifest.json").write_text(
        json.dumps({"store": "../../cache/npu2", "target": "npu2", "elfs": {"x": kept}})
    )
    listed = {(e.target, e.key): e.referenced for e in cache_command.entries(tmp_path)}
    assert [k for (t, k), used in listed.items() if not used] == sorted(orphans) + [dropped]

    assert cache_command.collect_garbage(tmp_path) == {"emu": [], "npu2": []}  # all too recent
    removed = cache_command.collect_garbage(tmp_path, grace_s=0)

    assert set(removed["emu"]) == orphans | {p.name for p in debris}
    assert removed["npu2"] == [dropped]
    assert emu.keys() == sorted(set(narrow.manifest["elfs"].values()))
    assert all(map(emu.is_valid, emu.keys()))
    assert npu2.keys() == [kept]
    assert (emu.root / LOCK).exists()


def test_cache_command_refuses_an_unclear_gc_value(tmp_path):
    with pytest.raises(UserError, match="gc=1"):
        cache_command.command(tmp_path, "yes")


def _publish_rounds(root: str, rounds: int) -> None:
    """Every process publishes the same new keys in the same order, so each round is a
    race between all of them for one key."""
    store = Store(Path(root), "emu")
    for number in range(rounds):
        payload = f"round {number}".encode() * 1000
        store.publish(f"{number:064x}", {"instance": f"r{number}"}, {"plan.json": payload})


def test_concurrent_publishers_never_collide(tmp_path):
    rounds, workers = 40, 4
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_publish_rounds, args=(str(tmp_path), rounds))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    assert [p.exitcode for p in processes] == [0] * workers
    store = Store(tmp_path, "emu")
    assert store.keys() == [f"{n:064x}" for n in range(rounds)]
    assert all(map(store.is_valid, store.keys()))
    assert sorted(p.name for p in store.root.iterdir() if p.name.startswith(".")) == [LOCK]


@pytest.mark.slow
def test_parallel_doit_compile_then_nothing_to_do(tmp_path, model_dir):
    """`doit -n 2 compile` from scratch: ELFs publish from two workers at once."""

    def doit_compile() -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "doit", "-n", "2", "compile", "target=emu", "buckets=64,128",
             f"model={model_dir}"],
            cwd=ROOT, env={**os.environ, "AIE_BUILD_DIR": str(tmp_path)},
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return re.findall(r"^\.  (compile:\S+)", result.stderr, re.M)

    first = doit_compile()
    artifacts = ArtifactSet.open(tmp_path / "targets" / "emu" / "manifest.json")
    expected = [*artifacts.instances, "manifest", "choices"]
    assert sorted(first) == sorted(f"compile:{i}" for i in expected)
    assert all(Store(tmp_path, "emu").is_valid(k) for k in artifacts.manifest["elfs"].values())
    assert doit_compile() == []


def test_gc_keeps_the_entries_a_running_process_has_pinned(tmp_path, model_dir):
    """A run pins the entries it loads: `doit cache gc=1` meanwhile keeps them even
    when no manifest names them; a dead process's pin no longer counts."""
    import os

    from aierun.artifacts import PINS, ArtifactSet, pin_entries

    manifest = compile_all(BuildConfig(tmp_path, str(model_dir), (64,), "emu"))
    artifacts = ArtifactSet.open(manifest)
    store = Store(tmp_path, "emu")
    pin = artifacts.pin()
    assert pin is not None and pin.name == f"{os.getpid()}.json"
    assert store.collect_garbage(keep=set(), grace_s=0) == []  # all pinned by this process
    pin.unlink()
    pin_entries(store.root, store.keys())  # as this process...
    (store.root / PINS / f"{os.getpid()}.json").rename(store.root / PINS / "999999999.json")
    removed = store.collect_garbage(keep=set(), grace_s=0)  # ...but dead: nothing kept
    assert set(removed) >= set(artifacts.manifest["elfs"].values())
