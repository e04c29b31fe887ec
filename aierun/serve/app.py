"""The OpenAI-compatible HTTP API (Starlette; SSE by sse-starlette).

The app never runs the model: a request is checked (openai_schema), tokenized,
measured against the context, queued for the worker thread, and what the worker
hands back is answered as one JSON body or streamed as server-sent events. While a
streamed request waits in the queue or its prompt is prefilled, SSE comments
(`: ping`) keep the connection from idling out.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from aierun.errors import UserError
from aierun.host.sampling import Sampling
from aierun.serve.openai_schema import (
    ApiError,
    GenerationRequest,
    parse_chat,
    parse_completion,
)
from aierun.serve.worker import Failed, Finished, Job, Piece, TokenLogprob, Worker
from aierun.session import Session

MAX_BODY_BYTES = 4_000_000  # a prompt that fills a 131072 context is about 0.6 MB
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streamed request checks its client


def build_app(
    session: Session,
    api_key: str | None = None,
    queue_size: int = 32,
    max_tokens: int = 512,
    keepalive_s: float = 5.0,
) -> Starlette:
    """The app serving `session` (prepared): it starts and stops its worker thread."""
    return Api(session, api_key, queue_size, max_tokens, keepalive_s).app


class Api:
    def __init__(
        self,
        session: Session,
        api_key: str | None,
        queue_size: int,
        max_tokens: int,
        keepalive_s: float,
    ):
        self.session = session
        self.model = session.checkpoint.name
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.keepalive_s = keepalive_s
        self.context = session.context
        # Room for at least one answer token (a prompt longer than the largest bucket
        # has its tail fed as decode steps: aierun/session.py _prefill_then_feed).
        self.max_prompt = self.context - 1
        self.created = int(time.time())
        # The worker detokenizes while requests are tokenized here: one tokenizer, one
        # user at a time (the Rust tokenizer refuses concurrent mutable use).
        self.tokenizer_lock = threading.Lock()
        self.worker = Worker(session, queue_size, self.tokenizer_lock)
        self.metrics = self.worker.metrics
        self.page = resources.files("aierun.serve").joinpath("static/chat.html").read_text()
        routes = [
            Route("/", self.index),
            Route("/health", self.health),
            Route("/v1/health", self.health),
            Route("/metrics", self.prometheus),
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]
        self.app = Starlette(
            routes=routes,
            lifespan=self.lifespan,
            exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        )
        self.app.state.api = self  # what tests and tools reach the worker through

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.worker.start()
        try:
            yield
        finally:
            self.worker.stop()

    # -- what is not a generation ------------------------------------------------
    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "model": self.model, "queue_depth": self.worker.depth()}
        )

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except ApiError as exc:
            return self._error(request, exc)
        model = {"id": self.model, "object": "model", "created": self.created, "owned_by": "aierun"}
        return JSONResponse({"object": "list", "data": [model]})

    # -- generations -------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        return await self._generation(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generation(request, chat=False)

    async def _generation(self, request: Request, chat: bool) -> Response:
        try:
            self._authorize(request)
            body = await _read_json(request)
            if chat:
                parsed = parse_chat(body)
                ids, param = self._encode_chat(parsed.messages), "messages"
            else:
                parsed = parse_completion(body)
                ids, param = self._encode_prompt(parsed.prompt), "prompt"
            options = parsed.options
            sampling = Sampling(options.temperature, options.top_p, options.seed)
            job = Job(
                ids, self._budget(len(ids), options.max_tokens, param), sampling,
                options.stop, options.top_logprobs, asyncio.get_running_loop(),
            )  # fmt: skip
            self.worker.submit(job)
        except ApiError as exc:
            return self._error(request, exc)
        shape = (ChatShape if chat else CompletionShape)(self.model, options)
        if options.stream:
            self._count(request, 200)
            return EventSourceResponse(
                self._stream(job, shape, options), ping=self.keepalive_s, sep="\n"
            )
        return await self._whole(request, job, shape)

    def _encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            with self.tokenizer_lock:
                return self.session.checkpoint.encode_chat(messages)
        except UserError as exc:
            raise ApiError(400, str(exc), "messages") from None
        except Exception as exc:  # the model's own template (jinja) may refuse a sequence
            raise ApiError(
                400, f"the model's chat template refused them: {exc}", "messages"
            ) from None

    def _encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            vocab = self.session.shape.vocab
            if max(prompt) >= vocab:
                raise ApiError(400, f"prompt: token ids must be below {vocab}", "prompt")
            return prompt
        if not prompt:
            raise ApiError(400, "prompt: must not be empty", "prompt")
        with self.tokenizer_lock:
            return list(self.session.checkpoint.tokenizer(prompt)["input_ids"])

    def _budget(self, n: int, asked: int | None, param: str) -> int:
        """How many tokens the job may generate; a prompt or answer that cannot fit is
        a 400 with the numbers (OpenAI's code context_length_exceeded)."""
        if n > self.max_prompt:
            raise ApiError(
                400,
                f"{param}: the prompt has {n} tokens; the context holds {self.context} "
                f"positions, so at most {self.max_prompt} prompt tokens and an answer. "
                "Shorten it.",
                param,
                code="context_length_exceeded",
            )
        room = self.context - n
        if asked is not None and asked > room:
            raise ApiError(
                400,
                f"max_tokens: {n} prompt tokens + {asked} max_tokens exceed the model's "
                f"context of {self.context} tokens (at most {room} here)",
                "max_tokens",
                code="context_length_exceeded",
            )
        return asked if asked is not None else min(self.max_tokens, room)

    async def _stream(
        self, job: Job, shape: ChatShape | CompletionShape, options: GenerationRequest
    ) -> AsyncIterator[dict[str, str]]:
        try:
            yield _data(shape.opening())  # the client sees the answer begin at once
            while True:
                event = await job.events.get()
                if isinstance(event, Piece):
                    if event.text or event.logprob:
                        yield _data(shape.chunk(event.text, event.logprob))
                elif isinstance(event, Failed):
                    yield _data(ApiError(event.status, event.message, kind="server_error").body())
                    return
                else:
                    yield _data(shape.chunk("", None, event.reason))
                    if options.include_usage:
                        yield _data(shape.usage_chunk(event))
                    yield {"data": "[DONE]"}
                    return
        finally:  # normal end, or sse-starlette cancelled us when the client went away
            job.cancelled.set()

    async def _whole(self, request: Request, job: Job, shape: ChatShape | CompletionShape):
        text: list[str] = []
        logprobs: list[TokenLogprob] = []
        try:
            while True:
                event = await _next_event(request, job)
                if event is None:  # the client has gone: nobody to answer
                    self._count(request, 499)
                    return Response(status_code=499)
                if isinstance(event, Piece):
                    text.append(event.text)
                    if event.logprob is not None:
                        logprobs.append(event.logprob)
                elif isinstance(event, Failed):
                    return self._error(request, ApiError(event.status, event.message))
                else:
                    self._count(request, 200)
                    return JSONResponse(shape.whole("".join(text), logprobs, event))
        finally:
            job.cancelled.set()  # a no-op after the end; stops a generation left behind

    # -- helpers -----------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, self.api_key):
            raise ApiError(
                401,
                "a missing or wrong API key: send `Authorization: Bearer <key>` with the "
                "key given to --api-key",
                code="invalid_api_key",
            )

    def _count(self, request: Request, status: int) -> None:
        self.metrics.requests.labels(request.url.path, str(status)).inc()

    def _error(self, request: Request, exc: ApiError) -> Response:
        self._count(request, exc.status)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


class ChatShape:
    """OpenAI's chat.completion and chat.completion.chunk objects."""

    def __init__(self, model: str, options: GenerationRequest):
        self.model, self.options = model, options
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def opening(self) -> dict[str, Any]:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}  # fmt: skip
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def chunk(self, text: str, logprob: TokenLogprob | None, reason: str | None = None):
        logprobs = {"content": [_chat_logprob(logprob)]} if logprob else None
        delta = {"content": text} if text else {}
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": _usage(finished)}

    def whole(self, text: str, logprobs: list[TokenLogprob], finished: Finished):
        wanted = self.options.top_logprobs is not None
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": [_chat_logprob(lp) for lp in logprobs]} if wanted else None,
            "finish_reason": finished.reason,
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(finished)}


class CompletionShape:
    """OpenAI's (legacy) text_completion object, streamed as the same object."""

    def __init__(self, model: str, options: GenerationRequest):
        self.model, self.options = model, options
        self.id = "cmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.offset = 0  # characters of the answer so far (logprobs' text_offset)

    def _object(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices}  # fmt: skip

    def opening(self) -> dict[str, Any]:
        return self.chunk("", None)

    def chunk(self, text: str, logprob: TokenLogprob | None, reason: str | None = None):
        logprobs = self._logprobs([logprob]) if logprob else None
        self.offset += len(text)
        return self._object(
            [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": reason}]
        )

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        return {**self._object([]), "usage": _usage(finished)}

    def whole(self, text: str, logprobs: list[TokenLogprob], finished: Finished):
        wanted = self.options.top_logprobs is not None
        choice = {
            "text": text,
            "index": 0,
            "logprobs": self._logprobs(logprobs) if wanted else None,
            "finish_reason": finished.reason,
        }
        return {**self._object([choice]), "usage": _usage(finished)}

    def _logprobs(self, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        offsets, at = [], self.offset
        for lp in logprobs:
            offsets.append(at)
            at += len(lp.token)
        return {
            "tokens": [lp.token for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [dict(lp.top) for lp in logprobs],
            "text_offset": offsets,
        }


def _chat_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token.encode("utf-8")),
        "top_logprobs": [
            {"token": t, "logprob": p, "bytes": list(t.encode("utf-8"))} for t, p in lp.top
        ],
    }


def _usage(finished: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finished.cached_tokens},
    }


def _data(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, ensure_ascii=False)}


async def _read_json(request: Request) -> Any:
    """The body as JSON, refused (413) beyond MAX_BODY_BYTES before it is all read."""
    too_big = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # includes bad UTF-8 and huge integers
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


async def _next_event(request: Request, job: Job) -> Piece | Finished | Failed | None:
    """The job's next event, or None once its client has disconnected."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                return None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    error = ApiError(
        exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind
    )
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")
    return JSONResponse(error.body(), status_code=500)
