"""The other model families (Qwen2, Qwen3) at small shapes against transformers, and the
refusal of an architecture outside the supported list."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import compile_emu  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from aierun.artifacts import ArtifactSet  # noqa: E402
from aierun.devices.emu import EmuDevice  # noqa: E402
from aierun.errors import UserError  # noqa: E402
from aierun.model import Checkpoint  # noqa: E402
from aierun.session import Session  # noqa: E402

SMALL = {
    "vocab_size": 500, "hidden_size": 256, "intermediate_size": 384, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
}  # fmt: skip
FAMILIES = {
    # Qwen2: q/k/v biases, head_dim = hidden / heads, untied here (0.5B ties: both work)
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": False}),
    # Qwen3: q/k norm, head_dim 128 with q_dim 512 != hidden 256, tied
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 128, "tie_word_embeddings": True}),
}


def tiny_family(path, tokenizer_from, family: str):
    """A random 2-layer model of the family saved as a checkpoint directory. The
    biases and q/k norm weights transformers initializes to 0 and 1 are drawn at
    random, so that a missing or misplaced one changes the logits."""
    config_class, model_class, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = model_class(config_class(**SMALL, **extra))
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(("_proj.bias", "q_norm.weight", "k_norm.weight")):
                tensor.copy_(torch.randn_like(tensor) * 0.5 + (1.0 if "norm" in name else 0))
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_from / name, path / name)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_small_family_checkpoint_matches_transformers(tmp_path, model_dir, family):
    reference = tiny_family(tmp_path / "model", model_dir, family).float()
    manifest = compile_emu(tmp_path / "home", tmp_path / "model", buckets=(32,))
    session = Session(Checkpoint(tmp_path / "model"), ArtifactSet.open(manifest), EmuDevice())
    ids = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]
    ours = session.prefill(ids, capacity=len(ids) + 4)
    for step in range(4):
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0, -1].numpy()
        cosine = np.dot(ours, expected) / np.linalg.norm(ours) / np.linalg.norm(expected)
        assert cosine > 0.999, f"step {step}"
        # Our pick is transformers' best, or as near it as the logits' difference (a
        # random model's near-ties, 1e-3 apart, fall either way in bf16).
        shortfall = expected.max() - expected[ours.argmax()]
        assert shortfall <= np.abs(ours - expected).max(), f"step {step}"
        ids.append(int(expected.argmax()))
        ours = session.decode(ids[-1])


def test_architecture_outside_the_list_is_refused_naming_it_and_the_list(tmp_path, model_dir):
    path = tmp_path / "model"
    tiny_family(path, model_dir, "qwen2")
    config = json.loads((path / "config.json").read_text())
    config |= {"architectures": ["GemmaForCausalLM"], "model_type": "gemma"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"GemmaForCausalLM.*supported: LlamaForCausalLM.*Qwen3"):
        compile_emu(tmp_path / "home", path, buckets=(32,))


@pytest.mark.parametrize("name", ["Qwen2.5-0.5B", "Qwen3-0.6B", "Llama-3.2-3B", "Qwen3-8B"])
def test_published_configs_give_the_family_and_its_tensors(name):
    from aiebuild.specs import model_specs
    from aierun.model import ModelShape, tensor_shapes
    from tools.random_llama import CONFIGS

    shape = ModelShape.from_config(CONFIGS[name])
    tensors = tensor_shapes(shape)
    assert ("model.layers.0.self_attn.q_proj.bias" in tensors) == name.startswith("Qwen2")
    assert ("model.layers.0.self_attn.k_norm.weight" in tensors) == name.startswith("Qwen3")
    ops = {launch.op for spec in model_specs(shape, [64]) for launch in spec.launches}
    assert ("bias" in ops) == shape.attention_bias
    if shape.qk_norm:
        assert tensors["model.layers.0.self_attn.q_norm.weight"] == (128,)


@pytest.mark.slow
def test_check_models_a_model_from_its_config_alone(tmp_path, capsys):
    from aiebuild import tasks

    config = {**SMALL, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
              "head_dim": 128, "tie_word_embeddings": True}  # fmt: skip
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    tasks.check_designs(tasks.BuildConfig(tmp_path / "home", str(tmp_path / "model"), (32,), "emu"))
    out = capsys.readouterr().out
    assert "PASS" in out
    assert "rms_gemms_rope.s32" in out and "modeled npu2 ms" in out
    assert "Qwen3ForCausalLM, 2 layers: prefill of 32 tokens" in out


def test_a_head_dim_flash_attn_cannot_block_is_refused_naming_it():
    from aiebuild.specs import check_tileable
    from aierun.model import ModelShape
    from tools.random_llama import CONFIGS

    config = {**CONFIGS["Qwen3-0.6B"], "head_dim": 192}
    with pytest.raises(UserError, match=r"head_dim \(Dh\) = 192: flash_attn's blocks"):
        check_tileable(ModelShape.from_config(config))
    check_tileable(ModelShape.from_config({**config, "head_dim": 256}))
