"""A plan is checked before anything is allocated from it: a hash-consistent entry
whose plan.json is malformed, or declares buffers its model cannot need, is refused
with the file named and what to do."""

from __future__ import annotations

import json

import pytest
from conftest import compile_emu

from aierun.artifacts import ENTRY_META, PLAN, ArtifactError, ArtifactSet
from aierun.files import sha256_file


@pytest.fixture
def artifacts(tmp_path, model_dir) -> ArtifactSet:
    return ArtifactSet.open(compile_emu(tmp_path, model_dir, (64,)))


def rewrite_plan(artifacts: ArtifactSet, instance: str, plan) -> None:
    """Replace an entry's plan and make its record consistent again, as an attacker
    who recomputes the hashes would."""
    entry = artifacts.store / artifacts.manifest["elfs"][instance]
    (entry / PLAN).write_text(json.dumps(plan))
    meta = json.loads((entry / ENTRY_META).read_text())
    size = (entry / PLAN).stat().st_size
    meta["files"][PLAN] = {"sha256": sha256_file(entry / PLAN), "size": size}
    (entry / ENTRY_META).write_text(json.dumps(meta))


def test_a_malformed_plan_is_refused_naming_it(artifacts):
    for plan in ({}, [], "plan", {"name": "o_gemv_ffn", "args": 3}):
        rewrite_plan(artifacts, "o_gemv_ffn", plan)
        with pytest.raises(ArtifactError, match=r"plan.json: malformed launch plan"):
            artifacts.load("o_gemv_ffn")


def test_a_plan_that_declares_a_huge_buffer_is_refused_before_allocating(artifacts):
    plan = artifacts.load("o_gemv_ffn").spec.to_json()
    intermediate = next(a for a in plan["args"] if a["role"] == "intermediate")
    intermediate["shape"] = [1 << 20, 1 << 20]  # 4 TiB of fp32
    rewrite_plan(artifacts, "o_gemv_ffn", plan)
    with pytest.raises(ArtifactError, match=rf"'{intermediate['name']}' declares"):
        artifacts.load("o_gemv_ffn")


def test_a_plan_of_another_elf_or_with_a_bad_binding_is_refused(artifacts):
    plan = artifacts.load("rms_gemv_rope").spec.to_json()
    rewrite_plan(artifacts, "o_gemv_ffn", plan)
    with pytest.raises(ArtifactError, match="is the plan of rms_gemv_rope, not o_gemv_ffn"):
        artifacts.load("o_gemv_ffn")
    plan = artifacts.load("rms_gemv_rope").spec.to_json()
    plan["launches"][0]["inputs"] = ["nowhere"]
    rewrite_plan(artifacts, "rms_gemv_rope", plan)
    with pytest.raises(ArtifactError, match="binds 'nowhere', no argument"):
        artifacts.load("rms_gemv_rope")
