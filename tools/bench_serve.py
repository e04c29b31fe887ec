"""Time a running `aierun serve` on loopback: the first token of a long conversation
sent cold, of its next turn (the conversation cached), and of that same next turn
sent cold; optionally a bounded load (clients x requests).

    .venv/bin/aierun serve --port 8011 &
    .venv/bin/python tools/bench_serve.py --port 8011 --load 16x4

Every request is bounded (max_tokens, a timeout); only 127.0.0.1 is ever addressed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import openai

DOCUMENT = (
    "The Seto Inland Sea separates Honshu, Shikoku and Kyushu. Its many islands, "
    "ferries and small ports have shaped the trade of the region for centuries. "
)


def first_token(client: openai.OpenAI, messages: list[dict[str, str]]) -> tuple[float, str, int]:
    """Seconds to the first streamed text, the answer, and the cached prompt tokens."""
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model="default", messages=messages, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    first, text, cached = None, "", 0
    for chunk in stream:
        if chunk.usage:
            cached = chunk.usage.prompt_tokens_details.cached_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter() - start
                text += choice.delta.content
    return first, text, cached


def prefix_reuse(client: openai.OpenAI, repeats: int) -> None:
    turn1 = [{"role": "user", "content": DOCUMENT * repeats + "\nWhich islands are named?"}]
    cold1, answer, _ = first_token(client, turn1)
    turn2 = [*turn1, {"role": "assistant", "content": answer},
             {"role": "user", "content": "And which sea?"}]  # fmt: skip
    cached, _, reused = first_token(client, turn2)
    # The server keeps conversations aside (--slots), so the same turn would find its
    # own again: sent cold, it starts with a system message no kept prompt has, which
    # leaves only the chat template's first tokens in common.
    cold2, _, reused_cold = first_token(client, [{"role": "system", "content": "Cold."}, *turn2])
    print(f"turn 1 cold: TTFT {cold1:.2f} s")
    print(f"turn 2, conversation cached ({reused} tokens reused): TTFT {cached:.2f} s")
    print(f"turn 2 sent cold ({reused_cold} tokens reused): TTFT {cold2:.2f} s")
    print(f"cached / cold: {cached / cold2:.2f}")


def load(base_url: str, clients: int, requests: int) -> None:
    questions = ["Japan", "France", "Italy", "Spain"]

    def one(index: int) -> list[float]:
        client = openai.OpenAI(base_url=base_url, api_key="none", timeout=600, max_retries=0)
        return [
            first_token(client, [{"role": "user", "content":
                                  f"What is the capital of {questions[(index + r) % 4]}?"}])[0]
            for r in range(requests)
        ]  # fmt: skip

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        ttfts = sorted(t for got in pool.map(one, range(clients), timeout=3600) for t in got)
    wall = time.perf_counter() - start
    p95 = ttfts[max(0, round(0.95 * len(ttfts)) - 1)]
    print(f"load {clients}x{requests}: {len(ttfts)} answered in {wall:.0f} s; TTFT p50 "
          f"{statistics.median(ttfts):.2f} s, p95 {p95:.2f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=18, help="document copies in turn 1")
    parser.add_argument("--load", default=None, help="CLIENTSxREQUESTS, e.g. 16x4")
    args = parser.parse_args()
    base_url = f"http://127.0.0.1:{args.port}/v1"
    prefix_reuse(openai.OpenAI(base_url=base_url, api_key="none", timeout=600), args.repeats)
    if args.load:
        clients, requests = (int(n) for n in args.load.split("x"))
        load(base_url, clients, requests)


if __name__ == "__main__":
    main()
