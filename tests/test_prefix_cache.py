"""Prefix reuse: a prompt that begins with the cached tokens computes only the rest,
and gets the logits a prefill of the whole prompt gives."""

from __future__ import annotations

import numpy as np

from aierun.host.kv_cache import KVCache

JAPAN = "What is the capital of Japan?"


def _first_logits(session, ids, reuse):
    seen = []
    tokens = list(session.generate(ids, 8, on_logits=seen.append, reuse=reuse))
    return seen[0], tokens


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_chat_turn_reuses_the_conversation_and_matches_a_full_prefill(session, monkeypatch):
    # On emu a small bucket's prefill often beats decode steps over a turn's new
    # tokens (the measured choice, tested below): here reuse is what is compared.
    monkeypatch.setattr(session, "_decode_pays", lambda steps, n: True)
    checkpoint = session.checkpoint
    first = checkpoint.encode_chat([{"role": "user", "content": JAPAN}])
    _, answer = _first_logits(session, first, reuse=True)
    text = checkpoint.tokenizer.decode(answer, skip_special_tokens=True)
    assert "Tokyo" in text
    turn = checkpoint.encode_chat(
        [
            {"role": "user", "content": JAPAN},
            {"role": "assistant", "content": text},
            {"role": "user", "content": "And of France?"},
        ]
    )
    cached_logits, cached_tokens = _first_logits(session, turn, reuse=True)
    # The whole first prompt, at least, was cached; only the new turn's tokens ran.
    assert session.last_reused >= len(first)
    assert session.tokens[: len(turn)] == turn
    cold_logits, cold_tokens = _first_logits(session, turn, reuse=False)
    assert session.last_reused == 0
    # Decode steps over the new tokens are the same causal attention as the prefill.
    assert _cosine(cached_logits, cold_logits) > 0.999
    assert int(np.argmax(cached_logits)) == int(np.argmax(cold_logits))
    assert cached_tokens[:3] == cold_tokens[:3]


def test_a_prompt_sent_again_recomputes_only_its_last_token(session):
    ids = session.checkpoint.encode_prompt(JAPAN)
    list(session.generate(ids, 8))  # measures a prefill and a decode step
    tokens = list(session.generate(ids, 8, reuse=True))
    assert session.last_reused == len(ids) - 1
    assert "Tokyo" in session.checkpoint.tokenizer.decode(tokens)


def test_a_prompt_sharing_nothing_is_prefilled(session):
    list(session.generate(session.checkpoint.encode_prompt(JAPAN), 2, reuse=True))
    other = session.checkpoint.encode_prompt("Name a colour.", chat=False)
    list(session.generate(other, 2, reuse=True))
    assert session.last_reused == 0


def test_reuse_is_chosen_when_the_measured_decode_steps_cost_less(session, monkeypatch):
    monkeypatch.setattr(session, "_prefill_s", {64: 0.3})
    monkeypatch.setattr(session, "_decode_s", 0.05)
    assert session._decode_pays(5, 40)
    assert not session._decode_pays(7, 40)
    assert session._decode_pays(11, 100)  # bucket 128, not run: 0.3 * 128 / 64
    assert not session._decode_pays(13, 100)
    assert session._decode_pays(10_000, 10_000)  # beyond every bucket: only reuse can run it


def test_truncating_inside_the_prompt_keeps_its_first_positions():
    kv = KVCache(1, 1, 2, 4)
    keys = np.arange(16, dtype=np.float32).reshape(1, 8, 2)
    kv.keep_prompt(0, keys, keys + 100, 6)
    kv.truncate(3)
    kv.store(0, 3, np.full((1, 2), -1, np.float32), np.full((1, 2), -2, np.float32))
    (k0, _), (k1, v1) = kv.parts(0, 4)
    np.testing.assert_array_equal(k0, keys[:, :3])
    np.testing.assert_array_equal(k1, [[[-1, -1]]])
    np.testing.assert_array_equal(v1, [[[-2, -2]]])
