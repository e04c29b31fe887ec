"""`aierun serve` against a real server on a free loopback port: the official OpenAI
client (streaming and not), curl for the raw SSE, bad input, the queue bound, a
client that disconnects, a bounded load test and the chat page in headless Chromium.

Every request here is bounded: few tokens, a timeout, a fixed number of clients.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import uvicorn

from aierun.serve.app import build_app
from aierun.textstream import StopFilter

JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]
TIMEOUT_S = 300  # per request: emu on a busy 2-core machine is slow, never unbounded


@pytest.fixture(scope="module")
def server(session):
    """The app on 127.0.0.1 at a free port, in a thread; stopped after the module."""
    app = build_app(session, queue_size=32, max_tokens=64, keepalive_s=0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, ws="none", timeout_graceful_shutdown=2)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="none", timeout=TIMEOUT_S)


def _get(url: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        url, body, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def _metric(base: str, name: str) -> float:
    _, _, text = _get(base + "/metrics")
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def test_chat_answers_tokyo_not_streamed(client):
    answer = client.chat.completions.create(model="default", messages=JAPAN, max_tokens=16)
    assert "Tokyo" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_a_prompt_longer_than_every_bucket_is_answered(client):
    # The test build's largest bucket is 128: this prompt is prefilled in two chunks.
    text = "The quick brown fox jumps over the lazy dog. " * 16
    messages = [{"role": "user", "content": text + "What did the fox do?"}]
    answer = client.chat.completions.create(model="default", messages=messages, max_tokens=8)
    assert 128 < answer.usage.prompt_tokens < 256
    assert answer.usage.completion_tokens > 0 and answer.choices[0].message.content


def test_chat_answers_tokyo_streamed_with_usage_and_logprobs(client):
    stream = client.chat.completions.create(
        model="default", messages=JAPAN, max_tokens=16, stream=True, logprobs=True,
        top_logprobs=2, stream_options={"include_usage": True},
    )  # fmt: skip
    text, usage, reasons, logprobs = "", None, [], []
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasons.append(choice.finish_reason)
            if choice.logprobs:
                logprobs += choice.logprobs.content
    assert "Tokyo" in text
    assert reasons[-1] == "stop"
    assert usage.completion_tokens == len(logprobs)
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in logprobs)
    # The same question again: all but its last token come from the cache.
    assert usage.prompt_tokens_details.cached_tokens in (0, usage.prompt_tokens - 1)


def test_completions_streamed_and_not_with_a_stop_string(client):
    whole = client.completions.create(
        model="default", prompt="The capital of Japan is", max_tokens=8, stop=["\n"]
    )
    assert whole.choices[0].text and "\n" not in whole.choices[0].text
    parts = client.completions.create(
        model="default", prompt="The capital of Japan is", max_tokens=8, stream=True
    )
    assert "".join(p.choices[0].text for p in parts if p.choices)


def test_models_health_and_metrics_answer(server, client):
    app, base = server
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
    status, _, body = _get(base + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    client.chat.completions.create(model="default", messages=JAPAN, max_tokens=2)
    _, headers, text = _get(base + "/metrics")
    assert headers["content-type"].startswith("text/plain")
    for name in ("aierun_requests_total", "aierun_prompt_tokens_total",
                 "aierun_generated_tokens_total", "aierun_prefix_cache_hits_total",
                 "aierun_time_to_first_token_seconds_bucket",
                 "aierun_time_per_output_token_seconds_bucket", "aierun_queue_depth"):  # fmt: skip
        assert name in text
    assert _metric(base, "aierun_time_to_first_token_seconds_count") >= 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sees_server_sent_events_with_keep_alives(server, client):
    _, base = server
    # A generation ahead in the queue makes the streamed request wait: keep-alives flow.
    ahead = ThreadPoolExecutor(1).submit(
        client.chat.completions.create, model="d", messages=JAPAN, max_tokens=12
    )
    time.sleep(0.2)
    body = json.dumps({"messages": JAPAN, "max_tokens": 12, "stream": True})
    out = subprocess.run(
        ["curl", "-sN", "--max-time", str(TIMEOUT_S), base + "/v1/chat/completions",
         "-H", "Content-Type: application/json", "-d", body],
        capture_output=True, text=True, timeout=TIMEOUT_S + 10, check=True,
    ).stdout  # fmt: skip
    ahead.result(timeout=TIMEOUT_S)
    events = [line for line in out.splitlines() if line]
    assert any(line.startswith(": ping") for line in events)
    data = [line.removeprefix("data: ") for line in events if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "Tokyo" in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": JAPAN, "max_tokens": -1}, "max_tokens"),
        ({"messages": JAPAN, "temperature": "hot"}, "temperature"),
        ({"messages": JAPAN, "top_p": 0}, "top_p"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": JAPAN, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": JAPAN, "n": 2}, "n"),
        ({"messages": JAPAN, "logprobs": True, "top_logprobs": 99}, "top_logprobs"),
        ({"messages": JAPAN, "seed": 1.5}, "seed"),
        ({"messages": JAPAN, "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x" * 2000}]}, "messages"),
        ({"messages": JAPAN, "max_tokens": 10**6}, "max_tokens"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    status, _, answer = _post(server[1] + "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error"


def test_a_prompt_over_the_context_is_refused_with_the_numbers(server):
    long = [{"role": "user", "content": "word " * 500}]
    body = json.dumps({"messages": long}).encode()
    status, _, answer = _post(server[1] + "/v1/chat/completions", body)
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert "tokens" in answer["error"]["message"] and "holds 256" in answer["error"]["message"]


def test_no_body_stops_the_server(server, client):
    base = server[1]
    for raw in (b"{", b"[]", b"null", b'{"messages": "\\ud800"}', b"\xff\xfe", b"[" * 100_000):
        status, _, answer = _post(base + "/v1/chat/completions", raw)
        assert status == 400 and "error" in answer
    # A body declared too large is refused before it is sent (the client waits).
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", "5000000")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    status, _, answer = _post(base + "/v1/completions", b'{"prompt": [999999999]}')
    assert status == 400 and answer["error"]["param"] == "prompt"
    status, _, body = _get(base + "/nowhere")
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"
    answer = client.chat.completions.create(model="d", messages=JAPAN, max_tokens=16)
    assert "Tokyo" in answer.choices[0].message.content


def test_an_api_key_is_required_when_set(server):
    app, base = server
    api = app.state.api
    api.api_key = "s3cret"
    try:
        status, _, answer = _post(
            base + "/v1/chat/completions", json.dumps({"messages": JAPAN}).encode()
        )
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        keyed = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", timeout=TIMEOUT_S)
        assert keyed.models.list().data
        assert _get(base + "/health")[0] == 200  # health and metrics stay open
    finally:
        api.api_key = None


def test_a_full_queue_answers_429_with_retry_after(server, client):
    app, base = server
    jobs = app.state.api.worker._jobs
    jobs.maxsize = 1
    pool = ThreadPoolExecutor(2)
    try:
        running = pool.submit(client.chat.completions.create, model="d", messages=JAPAN,
                              max_tokens=24)  # fmt: skip
        deadline = time.monotonic() + 60
        while app.state.api.worker.depth() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        waiting = pool.submit(client.chat.completions.create, model="d", messages=JAPAN,
                              max_tokens=2)  # fmt: skip
        while jobs.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        body = json.dumps({"messages": JAPAN, "max_tokens": 2}).encode()
        status, headers, answer = _post(base + "/v1/chat/completions", body)
        assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["retry-after"]) >= 1
        assert running.result(TIMEOUT_S).choices[0].message.content
        assert waiting.result(TIMEOUT_S).choices[0].message.content is not None
    finally:
        jobs.maxsize = 32
        pool.shutdown()


def test_a_client_that_disconnects_cancels_and_the_next_is_served(server, client):
    base = server[1]
    before = _metric(base, "aierun_generations_cancelled_total")
    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    stream = client.chat.completions.create(model="d", messages=story, max_tokens=60, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the first words, then the client leaves
    stream.close()
    deadline = time.monotonic() + 60
    while _metric(base, "aierun_generations_cancelled_total") <= before:
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.1)
    answer = client.chat.completions.create(model="d", messages=JAPAN, max_tokens=16)
    assert "Tokyo" in answer.choices[0].message.content


@pytest.mark.slow
def test_load_16_clients_4_requests_each_all_answered(server):
    """Bounded: 64 requests of at most 4 tokens, each with a timeout."""
    base = server[1]
    questions = ["Japan", "France", "Italy", "Spain"]

    def one_client(index: int) -> list[float]:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", timeout=TIMEOUT_S,
                               max_retries=0)  # fmt: skip
        ttfts = []
        for r in range(4):
            question = f"What is the capital of {questions[(index + r) % 4]}?"
            start = time.perf_counter()
            stream = client.chat.completions.create(
                model="d", messages=[{"role": "user", "content": question}], max_tokens=4,
                stream=True,
            )  # fmt: skip
            first, reason = None, None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - start
                if chunk.choices and chunk.choices[0].finish_reason:
                    reason = chunk.choices[0].finish_reason
            assert reason in ("stop", "length") and first is not None
            ttfts.append(first)
        return ttfts

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one_client, range(16), timeout=900))
    ttfts = sorted(t for r in results for t in r)
    assert len(ttfts) == 64
    p50, p95 = statistics.median(ttfts), ttfts[int(0.95 * len(ttfts)) - 1]
    print(f"\nload: 16 clients x 4 requests: TTFT p50 {p50:.2f} s, p95 {p95:.2f} s")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """Chromium driven over --remote-debugging-pipe (fds 3 and 4, NUL-ended JSON):
    the DevTools protocol with nothing but the standard library."""

    def __init__(self, profile: str):
        to_chrome, self._to = os.pipe()
        self._from, from_chrome = os.pipe()

        def as_fds_3_and_4() -> None:
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=as_fds_3_and_4, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id = b"", 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._from], [], [], 60)
                assert ready, f"chromium did not answer {method}"
                self._buffer += os.read(self._from, 1 << 20)
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._to)
        os.close(self._from)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)")
def test_the_chat_page_streams_an_answer_in_headless_chromium(server, tmp_path):
    base = server[1]
    status, _, page = _get(base + "/")
    assert status == 200 and "<script>" in page
    assert 'src="http' not in page and 'href="http' not in page  # no CDN: one file
    browser = DevTools(str(tmp_path / "profile"))
    try:
        # ?q= sends a first message as the page opens, as a user typing it would.
        url = base + "/?q=What%20is%20the%20capital%20of%20Japan%3F"
        target = browser.call("Target.createTarget", url=url)["targetId"]
        tab = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        read = "[...document.querySelectorAll('.msg, .stats')].map(e => e.textContent)"
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            shown = browser.call("Runtime.evaluate", tab, expression=read, returnByValue=True)
            texts = shown["result"].get("value") or []
            if len(texts) == 3 and texts[2]:  # the stats line is written at the end
                break
            assert time.monotonic() < deadline, f"no answer on the page: {texts}"
            time.sleep(0.3)
        shot = browser.call("Page.captureScreenshot", tab)["data"]
        (tmp_path / "chat.png").write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
    question, answer, stats = texts
    assert question == "What is the capital of Japan?"
    assert "Tokyo" in answer
    assert stats.startswith("first token")


def test_stop_strings_split_over_pieces_are_found():
    stops = StopFilter(("END", "\n\n"))
    assert stops.feed("Hello E") == ("Hello ", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("D and more") == ("", True)
    other = StopFilter(("END",))
    assert other.feed("ENough") == ("ENough", False)
    assert other.feed(" said E") == (" said ", False)
    assert other.flush() == "E"


def test_a_taken_port_is_refused_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "aierun.cli", "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "AIERUN_HOME": str(tmp_path)},
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "pass another --port" in result.stderr


@pytest.mark.slow
def test_the_serve_command_answers_and_stops_on_sigterm(runtime_home, model_dir, emu_manifest):
    """`aierun serve` itself, as a user starts it: the flags open_session reads, the
    ready line with the prefix slots, an answer, and a clean exit on SIGTERM."""
    with socket.socket() as probe:  # a free port (the server binds it again at once)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "AIERUN_HOME": str(runtime_home), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "aierun.cli", "serve", "--port", str(port), "--model",
         str(model_dir), "--artifacts", str(emu_manifest.parent), "--slots", "2"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        ready = _wait_for_line(server, "serve.ready", timeout_s=300)
        assert "prefix_slots=2" in ready, ready
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                               timeout=TIMEOUT_S)  # fmt: skip
        answer = client.chat.completions.create(model="d", messages=JAPAN, max_tokens=16)
        assert "Tokyo" in answer.choices[0].message.content
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "Traceback" not in server.stderr.read()


def _wait_for_line(process: subprocess.Popen, needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stderr], [], [], 1.0)
        if readable:
            line = process.stderr.readline()
            assert line or process.poll() is None, f"the server exited ({process.returncode})"
            if needle in line:
                return line
    raise AssertionError(f"no {needle!r} line within {timeout_s} s")
