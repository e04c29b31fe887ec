"""verify and diagnosis: the top-k gate and the per-layer comparison against
transformers, on the healthy pipeline and on one with a fault injected in one layer."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from aierun import cli
from aierun.errors import UserError
from aierun.session import Session
from aierun.verify import diagnosis
from aierun.verify.diagnosis import diagnose
from aierun.verify.gate import load_prompts, verify
from aierun.verify.reference import Reference

torch = pytest.importorskip("torch")

PROMPT = "What is the capital of France?"
N_TOKENS = 8
BAD_LAYER = 3


@pytest.fixture(scope="module")
def reference(model_dir) -> Reference:
    return Reference(model_dir)


def inject_fault(session: Session, monkeypatch, bad_layer: int) -> None:
    """Test-only fault: layer `bad_layer`'s o_ffn / o_gemv_ffn call writes the
    negated residual stream to device memory (a sign error in one kernel): y, or the
    d and h decode hands on in its place."""
    real_call = session.call

    def call(instance, layer, read=(), **inputs):
        buffers = real_call(instance, layer, read, **inputs)
        if layer == bad_layer and instance.startswith(("o_ffn", "o_gemv_ffn")):
            for name in ("y",) if "y" in buffers else ("d", "h"):
                out = buffers[name]
                out.sync_from_device()
                out.host[...] = -out.host
                out.sync_to_device()
        return buffers

    monkeypatch.setattr(session, "call", call)


def test_prompts_file_one_per_line_blank_lines_ignored(tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("  Name a colour. \n\n   \nWhy is the sky blue?\n")
    assert load_prompts(file) == ["Name a colour.", "Why is the sky blue?"]


def test_empty_or_missing_prompts_file_is_a_user_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="no prompt"):
        load_prompts(empty)
    with pytest.raises(UserError, match="cannot read"):
        load_prompts(tmp_path / "absent.txt")


def test_missing_torch_names_the_extra_to_install(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(UserError, match=r"aie-llm\[reference\]"):
        Reference(model_dir)


def test_reference_hidden_states_are_each_layers_output_before_the_final_norm(
    reference, checkpoint
):
    ids = checkpoint.encode_prompt(PROMPT)
    run = reference.run(ids, hidden=True)
    with torch.inference_mode():
        out = reference.model(torch.tensor([ids]), output_hidden_states=True)
    hf = [h[0].float().numpy() for h in out.hidden_states]  # embeddings, ..., normed last
    assert len(run.hidden) == checkpoint.shape.n_layers
    for layer in range(checkpoint.shape.n_layers - 1):
        np.testing.assert_array_equal(run.hidden[layer], hf[layer + 1])
    with torch.inference_mode():
        normed_last = reference.model.model.norm(torch.from_numpy(run.hidden[-1]).bfloat16())
    np.testing.assert_array_equal(normed_last.float().numpy(), hf[-1])
    np.testing.assert_array_equal(run.logits, out.logits[0].float().numpy())


@pytest.mark.slow
def test_verify_passes_on_the_default_model(session, reference):
    result = verify(session, reference, [PROMPT], N_TOKENS, k=5)
    check = result.checks[0]
    assert result.passed, check.ranks
    assert check.first_miss is None and check.topk_hits == N_TOKENS
    assert len(check.tokens) == N_TOKENS


def test_diagnosis_finds_every_layer_above_threshold_on_the_default_model(session, reference):
    diagnosis = diagnose(session, reference, PROMPT, threshold=0.99)
    assert diagnosis.first_bad_layer is None, [d.cosine_min for d in diagnosis.layers]
    assert len(diagnosis.layers) == session.shape.n_layers


def test_fault_in_one_layer_fails_verify(session, reference, monkeypatch):
    inject_fault(session, monkeypatch, BAD_LAYER)
    result = verify(session, reference, [PROMPT], N_TOKENS, k=5)
    assert not result.passed
    assert result.checks[0].first_miss is not None
    assert result.to_json()["pass"] is False


@pytest.mark.slow
def test_diagnosis_names_the_faulty_layer_and_exits_1(
    session, model_dir, tmp_path, monkeypatch, capsys
):
    inject_fault(session, monkeypatch, BAD_LAYER)
    monkeypatch.setattr(diagnosis, "open_session", lambda args: session)
    out = tmp_path / "diagnosis.json"
    code = cli.main(["diagnosis", "--model", str(model_dir), "--json", str(out)])
    assert code == 1
    assert f"first layer below cosine 0.99: layer {BAD_LAYER}" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["first_bad_layer"] == BAD_LAYER
    assert all(row["cosine_min"] >= 0.99 for row in data["layers"][:BAD_LAYER])


@pytest.mark.slow
def test_cli_verify_with_a_prompts_file_passes_and_writes_the_json_contract(
    model_dir, emu_manifest, tmp_path, capsys
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name three primary colours.\n\nWhat is 2 plus 2?\n")
    out = tmp_path / "verify.json"
    argv = ["verify", "--model", str(model_dir), "--artifacts", str(emu_manifest)]
    argv += ["--prompts", str(prompts), "--n-tokens", "4", "--json", str(out)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "[verify] PASS"
    data = json.loads(out.read_text())
    assert {"pass", "k", "n_tokens", "prompts", "min_hit_rate"} <= set(data)
    assert (data["pass"], data["k"], data["n_tokens"]) == (True, 5, 4)
    assert [p["prompt"] for p in data["prompts"]] == [
        "Name three primary colours.",
        "What is 2 plus 2?",
    ]
    for entry in data["prompts"]:
        assert {"prompt", "tokens", "topk_hits", "first_miss"} <= set(entry)
        assert len(entry["tokens"]) == 4 and entry["first_miss"] is None
