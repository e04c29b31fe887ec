"""OpenAI request bodies checked into what the worker runs, and OpenAI's error JSON.

Every field this server reads is checked here, before anything is queued: a wrong
type or value is a 400 whose `param` names the field, as OpenAI's API does. Fields
it does not implement (frequency_penalty, tools, ...) are ignored, as llama.cpp's
server does; `n` other than 1 is refused, since its answer would be wrong.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20  # chat; the legacy completions API allows 5


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind, self.code, self.headers = kind, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param)


@dataclass(frozen=True)
class GenerationRequest:
    """What both endpoints ask the worker for, apart from the prompt."""

    max_tokens: int | None  # None: the server's default, capped by the context left
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    top_logprobs: int | None  # None: no logprobs; 0: only the chosen token's


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    options: GenerationRequest


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | list[int]
    options: GenerationRequest


def parse_chat(body: Any) -> ChatRequest:
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty array of {role, content} objects")
    return ChatRequest([_message(m, i) for i, m in enumerate(messages)], _options(body, chat=True))


def parse_completion(body: Any) -> CompletionRequest:
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # one prompt in a batch of one
    if isinstance(prompt, str):
        _text("prompt", prompt)
    elif not (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    ):
        raise bad("prompt", "must be a string or a non-empty array of token ids (one prompt)")
    return CompletionRequest(prompt, _options(body, chat=False))


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if "model" in body and not isinstance(body["model"], str):
        raise bad("model", "must be a string")
    return body


def _message(message: Any, index: int) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad(where, "must be an object with role and content")
    role = message.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role", f"must be one of {', '.join(ROLES)}; got {role!r}")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones have a meaning here
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise bad(f"{where}.content", "only text content parts are supported")
        content = "".join(_text(f"{where}.content", p.get("text")) for p in content)
    return {"role": role, "content": _text(f"{where}.content", content)}


def _text(param: str, value: Any) -> str:
    if not isinstance(value, str):
        raise bad(param, "must be a string")
    try:  # JSON can carry lone surrogates ("\ud800"); no tokenizer can
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(param, "is not valid Unicode text (a lone surrogate)") from None
    return value


def _options(body: dict[str, Any], chat: bool) -> GenerationRequest:
    if body.get("n", 1) != 1:
        raise bad("n", "only n=1 is supported (one device generates one answer at a time)")
    max_tokens = body.get("max_completion_tokens") if chat else None
    name = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
    if max_tokens is not None:
        max_tokens = _integer(name, max_tokens, low=1)
    temperature = _number("temperature", body.get("temperature", 0.0), 0.0, 2.0)
    top_p = _number("top_p", body.get("top_p", 1.0), 0.0, 1.0)
    if top_p == 0:
        raise bad("top_p", "must be greater than 0")
    seed = body.get("seed")
    # No seed: a fresh one per request, as OpenAI samples differently each time.
    seed = secrets.randbits(32) if seed is None else _integer("seed", seed)
    stream = _bool("stream", body.get("stream", False))
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad("stream_options", "must be an object")
    include_usage = _bool(
        "stream_options.include_usage", stream_options.get("include_usage", False)
    )
    return GenerationRequest(
        max_tokens, temperature, top_p, seed, _stops(body.get("stop")), stream, include_usage,
        _logprobs(body, chat),
    )  # fmt: skip


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    if not chat:  # the legacy API: logprobs is the number of alternatives (0..5)
        value = body.get("logprobs")
        return None if value is None else _integer("logprobs", value, 0, 5)
    if not _bool("logprobs", body.get("logprobs", False)):
        if body.get("top_logprobs") is not None:
            raise bad("top_logprobs", "needs logprobs: true")
        return None
    top = body.get("top_logprobs")
    return 0 if top is None else _integer("top_logprobs", top, 0, MAX_TOP_LOGPROBS)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "must be a string or an array of strings")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"at most {MAX_STOPS} stop strings; got {len(stops)}")
    return tuple(_text("stop", s) for s in stops)


def _bool(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad(param, f"must be true or false; got {value!r}")
    return value


def _integer(param: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(param, f"must be an integer; got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise bad(param, f"must be {bounds}; got {value}")
    return value


def _number(param: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(param, f"must be a number; got {value!r}")
    if not low <= value <= high:
        raise bad(param, f"must be between {low:g} and {high:g}; got {value:g}")
    return float(value)
