"""`doit compile` as users run it: no-op rebuilds nothing, a changed spec
parameter rebuilds exactly the ELFs it affects."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def doit_compile(build: Path, *variables: str) -> set[str]:
    """Run `doit compile` into `build`; returns the tasks it executed."""
    env = {**os.environ, "AIE_BUILD_DIR": str(build)}
    result = subprocess.run(
        [sys.executable, "-m", "doit", "compile", "target=emu", *variables],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""  # doit's own lines go to stderr
    return set(re.findall(r"^\.  (compile:\S+)", result.stderr, re.M))


@pytest.fixture
def model_copy(tmp_path, model_dir) -> Path:
    """The default model with its weights linked, so its config can be edited."""
    copy = tmp_path / "model"
    copy.mkdir()
    for item in model_dir.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / "config.json").unlink()
    shutil.copy(model_dir / "config.json", copy / "config.json")
    return copy


@pytest.mark.slow
def test_second_compile_rebuilds_nothing(tmp_path, model_copy):
    build = tmp_path / "build"
    ran = doit_compile(build, f"model={model_copy}", "buckets=64")
    # 3 prefill ELFs, a later chunk's attention, 3 decode ELFs, the manifest, the choices.
    assert len(ran) == 9
    assert doit_compile(build, f"model={model_copy}", "buckets=64") == set()


@pytest.mark.slow
def test_changed_parameter_rebuilds_only_affected_elfs(tmp_path, model_copy):
    build = tmp_path / "build"
    doit_compile(build, f"model={model_copy}", "buckets=64")
    config = json.loads((model_copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6  # a parameter of every rmsnorm launch, nothing else
    (model_copy / "config.json").write_text(json.dumps(config))
    assert doit_compile(build, f"model={model_copy}", "buckets=64") == {
        "compile:rms_gemms_rope.s64", "compile:o_ffn.s64",
        "compile:rms_gemv_rope", "compile:o_gemv_ffn", "compile:manifest",
    }  # fmt: skip


@pytest.mark.slow
def test_new_bucket_builds_only_its_elfs(tmp_path, model_copy):
    build = tmp_path / "build"
    doit_compile(build, f"model={model_copy}", "buckets=64")
    assert doit_compile(build, f"model={model_copy}", "buckets=64,128") == {
        "compile:rms_gemms_rope.s128", "compile:flash_attn.s128", "compile:o_ffn.s128",
        "compile:o_gemv_ffn",  # its KV cache holds twice the largest bucket
        # The attention of a prompt's later chunks, which now start at 128.
        "compile:flash_attn_p128.s64", "compile:flash_attn_p128.s128",
        "compile:manifest", "compile:choices",
    }  # fmt: skip


def test_doit_list_works_before_the_default_model_is_made(tmp_path):
    """A fresh clone has no build/: `doit list` names the tasks instead of failing."""
    from aiebuild.tasks import BuildConfig, compile_tasks

    config = BuildConfig(tmp_path, None, (64,), "emu")
    (group,) = list(compile_tasks(config))
    assert group["name"] is None and "after `doit model`" in group["doc"]
