"""Each emulated op against the PyTorch / transformers formulation of the same math."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers.models.llama import modeling_llama  # noqa: E402

from aierun.model import ModelShape, rope_table  # noqa: E402
from aierun.ops import OPS  # noqa: E402
from aierun.ops.attention import attend  # noqa: E402
from aierun.ops.decode_attn import PAD, query_rows  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_rmsnorm_matches_llama_rmsnorm():
    x, w = rand(5, 64), rand(64)
    norm = modeling_llama.LlamaRMSNorm(64, eps=1e-5)
    norm.weight.data = torch.from_numpy(w)
    (ours,) = OPS["rmsnorm"]({"eps": 1e-5}, x, w)
    np.testing.assert_allclose(
        ours, norm(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_gemm_is_x_times_w_transposed():
    x, w = rand(3, 64), rand(128, 64)
    (ours,) = OPS["gemm"]({}, x, w)
    np.testing.assert_allclose(ours, x @ w.T, rtol=1e-5)


def test_rope_matches_transformers_rotate_half():
    shape = ModelShape(1, 128, 2, 1, 64, 64, 10, 1e-5, 10000.0, None, False, 32)
    positions, heads, dim = 7, 2, 64
    q = rand(positions, heads * dim)
    table = rope_table(shape, positions)
    (ours,) = OPS["rope"]({"heads": heads, "head_dim": dim}, q, table)
    cos = np.concatenate([table[:, : dim // 2]] * 2, axis=1)
    sin = np.concatenate([table[:, dim // 2 :]] * 2, axis=1)
    qt = torch.from_numpy(q.reshape(positions, heads, dim).transpose(1, 0, 2))[None]
    expected, _ = modeling_llama.apply_rotary_pos_emb(
        qt, qt, torch.from_numpy(cos)[None], torch.from_numpy(sin)[None]
    )
    expected = expected[0].numpy().transpose(1, 0, 2).reshape(positions, heads * dim)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_llama3_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    }  # fmt: skip
    config = LlamaConfig(
        hidden_size=2048, num_attention_heads=32, rope_theta=500000.0, rope_scaling=scaling
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    shape = ModelShape.from_config(config.to_dict())
    from aierun.model import rope_inv_freq

    np.testing.assert_allclose(rope_inv_freq(shape), expected.numpy(), rtol=1e-6)


def test_causal_gqa_attention_matches_sdpa():
    seq, heads, kv_heads, dim = 9, 6, 2, 64
    q, k, v = rand(seq, heads * dim), rand(seq, kv_heads * dim), rand(seq, kv_heads * dim)
    params = {"heads": heads, "kv_heads": kv_heads, "head_dim": dim, "past": 0}
    (ours,) = OPS["flash_attn"](params, q, k, v)

    def per_head(a: np.ndarray, n: int) -> torch.Tensor:
        return torch.from_numpy(a.reshape(seq, n, dim).transpose(1, 0, 2))[None]

    expected = torch.nn.functional.scaled_dot_product_attention(
        per_head(q, heads), per_head(k, kv_heads), per_head(v, kv_heads),
        is_causal=True, enable_gqa=True,
    )  # fmt: skip
    expected = expected[0].numpy().transpose(1, 0, 2).reshape(seq, heads * dim)
    with_numpy_exp = attend(q, k, v, heads, kv_heads, dim, causal=True)
    np.testing.assert_allclose(with_numpy_exp, expected, rtol=1e-4, atol=1e-5)
    # The kernel's operands are bfp16 (flash_attn.cc): a value rounds by at most 2^-7 of
    # its block's largest magnitude, so V moves each output by at most 2^-7 of max |v|;
    # the weights (bf16 exps, 2^-8 relative; their bfp16 value and rest about 2^-14)
    # and the bfp16 Q and K under the scores move the convex combination by a few
    # times that again: 2^-5 of max |v| (seen: 2^-7).
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2**-5 * np.abs(v).max())


def test_silu_mul_and_add():
    g, u = rand(4, 64), rand(4, 64)
    (ours,) = OPS["silu_mul"]({}, g, u)
    expected = torch.nn.functional.silu(torch.from_numpy(g)) * torch.from_numpy(u)
    # The kernel's exp is bf16-precise (relative error <= 2^-8, half a bf16 ulp), which
    # moves sigmoid = 1 / (1 + e) by less than that relative amount.
    np.testing.assert_allclose(ours, expected.numpy(), rtol=2**-8, atol=1e-6)
    np.testing.assert_array_equal(OPS["add"]({}, g, u)[0], g + u)


def test_blocked_attention_equals_one_block():
    seq, heads, kv_heads, dim = 300, 4, 2, 64
    q, k, v = rand(seq, heads * dim), rand(seq, kv_heads * dim), rand(seq, kv_heads * dim)
    blocked = attend(q, k, v, heads, kv_heads, dim, causal=True, block=64)
    whole = attend(q, k, v, heads, kv_heads, dim, causal=True, block=seq)
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)


def test_decode_attention_over_the_cache_matches_sdpa_on_its_first_positions():
    """One query row against the first `length` cached positions (the rest is stale
    memory the op must not read): PyTorch's attention of that row over exactly those."""
    heads, kv_heads, dim, context, length = 6, 2, 64, 96, 37
    q, cache = rand(1, heads * dim), rand(kv_heads, 2, context, dim)
    cache[:, :, length:] = 1e4  # would dominate any softmax that saw it
    params = {"heads": heads, "kv_heads": kv_heads, "head_dim": dim, "context": context}
    query = query_rows(q, kv_heads, length, np.zeros((kv_heads, 3 * dim + PAD), np.float32))
    (ours,) = OPS["decode_attn"](params, query, cache)
    keys, values = (torch.from_numpy(cache[:, i, :length])[None] for i in (0, 1))
    queries = torch.from_numpy(q.reshape(1, heads, 1, dim))
    expected = torch.nn.functional.scaled_dot_product_attention(
        queries, keys, values, enable_gqa=True
    )[0].numpy().reshape(1, heads * dim)  # fmt: skip
    # bf16-precise exps, as flash_attn's (above)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2**-7 * np.abs(values).max().item())
    assert not np.allclose(ours, 0, atol=1e-3)
