"""`aierun chat`: whole pasted messages, and the conversation cached between turns."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from aierun.chat_input import MessageReader

ROOT = Path(__file__).resolve().parents[1]


def _messages(text: str) -> list[str]:
    reader = MessageReader(io.StringIO(text), io.StringIO())
    found = []
    while (message := reader.read()) is not None:
        found.append(message)
    return found


def test_a_long_fenced_message_with_blank_lines_arrives_whole():
    paragraph = "A sentence of a long pasted document, with some words in it. " * 25
    document = f"{paragraph}\n\n{paragraph}\n\n\n{paragraph}\n{paragraph}\n{paragraph}"
    assert len(document) > 6900
    assert _messages(f'"""\n{document}\n"""\nThanks.\n') == [document.strip(), "Thanks."]


def test_blank_lines_are_no_message_and_bye_ends_the_chat():
    assert _messages("Hi\n\n\n   \nHow are you?\n/bye\nnever read\n") == ["Hi", "How are you?"]


def test_an_unclosed_fence_ends_with_the_input():
    assert _messages('"""\nline one\n\nline two\n') == ["line one\n\nline two"]


def test_a_line_longer_than_a_terminal_line_is_not_cut():
    line = "x" * 9000  # canonical-mode terminals cut at 4095; a pipe or readline does not
    assert _messages(line + "\n") == [line]


def test_chat_logs_each_turn_with_its_ttft_and_cached_tokens(runtime_home, model_dir, emu_manifest):
    env = {**os.environ, "AIERUN_HOME": str(runtime_home), "PYTHONUNBUFFERED": "1"}
    stdin = b"What is the capital of Japan?\n\nAnd of France?\n"
    result = subprocess.run(
        [sys.executable, "-m", "aierun.cli", "chat", "--model", str(model_dir),
         "--artifacts", str(emu_manifest.parent), "--n-tokens", "24"],
        input=stdin, capture_output=True, cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "Tokyo" in result.stdout.decode()
    newest = max((runtime_home / "logs").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in newest.read_text().splitlines()]
    turns = [e for e in events if e.get("event") == "chat.turn"]
    assert [t["turn"] for t in turns] == [1, 2]
    assert all(t["ttft_ms"] > 0 for t in turns)
    assert turns[0]["cached_tokens"] == 0
    # The second turn begins with the first turn's prompt: reused, or prefilled
    # because this session measured a prefill as cheaper (a small emu bucket).
    assert turns[1]["prompt_tokens"] > turns[0]["prompt_tokens"]
