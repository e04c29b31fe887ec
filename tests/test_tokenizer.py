"""The runtime's tokenizer (tokenizers + jinja2, no transformers) gives transformers'
ids and text."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from aierun.tokenizer import FastTokenizer

TEXTS = [
    "What is the capital of Japan?",
    "  leading spaces, trailing ones  ",
    "Ünïcödé, 日本語, emoji 🎉 and\ttabs\nand new lines\n\n",
    "<|im_start|>user special tokens in text<|im_end|>",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of Japan?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! 日本"},
        {"role": "user", "content": "Tell me\n\nmore."},
    ],
]


@pytest.fixture(scope="module")
def both(model_dir):
    return FastTokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_plain_text_ids_and_decoding_match(both, text):
    ours, theirs = both
    ids = ours(text)["input_ids"]
    assert ids == list(theirs(text)["input_ids"])
    bare = ours(text, add_special_tokens=False)["input_ids"]
    assert bare == list(theirs(text, add_special_tokens=False)["input_ids"])
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
            ids, skip_special_tokens=skip
        )


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches(both, messages):
    ours, theirs = both
    for prompt in (True, False):
        expected = theirs.apply_chat_template(
            messages, add_generation_prompt=prompt, tokenize=True, return_dict=False
        )
        assert ours.apply_chat_template(messages, add_generation_prompt=prompt) == list(expected)


def test_special_tokens_match(both):
    ours, theirs = both
    assert ours.eos_token_id == theirs.eos_token_id
    assert ours.unk_token_id == theirs.unk_token_id
    for token in ("<|im_end|>", "<|eot_id|>", "no such token"):
        assert ours.convert_tokens_to_ids(token) == theirs.convert_tokens_to_ids(token)
