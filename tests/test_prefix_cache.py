"""Prefix reuse: a prompt that begins with the cached tokens computes only the rest,
and gets the logits a prefill of the whole prompt gives."""

from __future__ import annotations

import numpy as np

from aierun.abi import ArgSpec, Role
from aierun.devices.emu import EmuDevice
from aierun.host.kv_cache import KVCache
from aierun.host.prefix_slots import PrefixSlots

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


def test_a_prompt_sent_again_recomputes_only_its_last_token(session, monkeypatch):
    ids = session.checkpoint.encode_prompt(JAPAN)
    list(session.generate(ids, 8))
    # Reuse is chosen by the measured step times (the next test); here it must be taken.
    monkeypatch.setattr(session, "_decode_pays", lambda steps, n: True)
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
    assert session._decode_pays(10_000, 10_000)  # beyond the context: only reuse can run it
    # Longer than every bucket (128), within the context (256): a 128 chunk then a 64.
    assert session._decode_pays(17, 150)  # 0.3 * 128 / 64 + 0.3
    assert not session._decode_pays(19, 150)


def test_slots_keep_the_newest_within_their_count_and_bytes():
    kv = KVCache.allocate(EmuDevice(), ArgSpec("kv_cache", (1, 2, 8, 2), "f32", Role.INPUT), 1)
    slots = PrefixSlots(count=2, max_bytes=10**6)
    for tokens in ([1, 2, 3], [1, 5], [7, 8]):
        slots.keep(tokens, kv)
    assert len(slots) == 2
    assert slots.best([1, 2, 3, 4])[1] == 1  # the oldest, [1, 2, 3], went first
    slot, shared = slots.best([1, 5, 6])
    assert (slot.tokens, shared) == ((1, 5), 2)
    small = PrefixSlots(count=8, max_bytes=2 * 2 * 2 * 4)  # two positions of K and V, fp32
    small.keep([1, 2], kv)
    small.keep([3], kv)
    assert [s.tokens for s in small._slots.values()] == [(3,)]


def test_two_conversations_alternating_each_find_their_prefix(session, monkeypatch):
    monkeypatch.setattr(session, "_decode_pays", lambda steps, n: True)
    encode = session.checkpoint.encode_prompt
    japan, colour = encode(JAPAN), encode("Name a colour.", chat=False)
    list(session.generate(japan, 2))
    session.slots = PrefixSlots(count=4, max_bytes=1 << 30)
    list(session.generate(colour, 2, reuse=True))  # shares nothing: prefilled, Japan kept
    assert session.last_reused == 0 and len(session.slots) == 1
    logits, tokens = _first_logits(session, japan, reuse=True)
    assert session.last_reused == len(japan) - 1  # found in its slot
    session.slots = None
    cold_logits, cold_tokens = _first_logits(session, japan, reuse=False)
    assert _cosine(logits, cold_logits) > 0.999
    assert tokens[:3] == cold_tokens[:3]
