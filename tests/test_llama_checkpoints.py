"""Other Llama-family checkpoints: untied LM head, Llama-3 rope scaling, odd shapes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import compile_emu  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from aierun.artifacts import ArtifactSet  # noqa: E402
from aierun.devices.emu import EmuDevice  # noqa: E402
from aierun.errors import UserError  # noqa: E402
from aierun.model import Checkpoint  # noqa: E402
from aierun.session import Session  # noqa: E402

LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
}  # fmt: skip


def tiny_llama(path, tokenizer_from, **overrides) -> LlamaForCausalLM:
    """A random 2-layer Llama saved as a checkpoint directory (its tokenizer is the
    default model's: the tests feed token ids below the tiny vocabulary)."""
    config = LlamaConfig(
        vocab_size=500, hidden_size=256, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING,
        **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_from / name, path / name)
    return model


def test_untied_llama3_scaled_checkpoint_matches_transformers(tmp_path, model_dir):
    reference = tiny_llama(tmp_path / "model", model_dir).float()
    home = tmp_path / "home"
    manifest = compile_emu(home, tmp_path / "model", buckets=(32,))
    session = Session(Checkpoint(tmp_path / "model"), ArtifactSet.open(manifest), EmuDevice())
    ids = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]
    ours = session.prefill(ids, capacity=len(ids) + 4)
    for _ in range(4):
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0, -1].numpy()
        cosine = np.dot(ours, expected) / np.linalg.norm(ours) / np.linalg.norm(expected)
        assert cosine > 0.999
        assert ours.argmax() == expected.argmax()
        ids.append(int(ours.argmax()))
        ours = session.decode(ids[-1])


def test_model_the_kernels_cannot_tile_is_refused_naming_the_dimension(tmp_path, model_dir):
    tiny_llama(tmp_path / "model", model_dir, head_dim=48)
    with pytest.raises(UserError, match=r"head_dim \(Dh\) = 48 is not a multiple of 64"):
        compile_emu(tmp_path / "home", tmp_path / "model", buckets=(32,))


def test_artifacts_of_another_model_are_refused(tmp_path, model_dir, emu_manifest):
    tiny_llama(tmp_path / "model", model_dir)
    with pytest.raises(UserError, match="compiled for another model shape"):
        Session(Checkpoint(tmp_path / "model"), ArtifactSet.open(emu_manifest), EmuDevice())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 0}, r"config.json has num_attention_heads = 0, where a"),
        ({"vocab_size": "many"}, r"vocab_size = 'many'"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, r"rope scaling 'linear'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope scaling 'yarn'"),
    ],
)
def test_a_config_the_model_cannot_run_is_refused_when_read(tmp_path, model_dir, change, message):
    import json

    path = tmp_path / "model"
    tiny_llama(path, model_dir)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
        Checkpoint(path)


@pytest.mark.parametrize(
    ("change", "tensor"),
    [({"vocab_size": 501}, "model.embed_tokens.weight"),  # a padded id could be sampled
     ({"intermediate_size": 448}, "model.layers.0.mlp.gate_proj.weight")],
)  # fmt: skip
def test_weights_that_do_not_match_the_config_are_named_when_read(
    tmp_path, model_dir, change, tensor
):
    import json

    path = tmp_path / "model"
    tiny_llama(path, model_dir)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=rf"model.safetensors: tensor '{tensor}' is \["):
        Checkpoint(path)
