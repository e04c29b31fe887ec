"""The one thread that owns the Session: generations run one at a time, in order.

One device runs one generation at a time, so the HTTP side never touches the
Session: it puts a Job on a bounded FIFO (full: the caller answers 429) and reads the
events the worker hands back to its event loop. A job whose client went away has
its `cancelled` flag set; the worker checks it before each token, so the device is
free again at the next token. Whatever a generation raises is that job's error
event; the worker goes on with the next job.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import structlog

from aierun.errors import UserError
from aierun.host.sampling import Sampling
from aierun.serve.metrics import Metrics
from aierun.serve.openai_schema import ApiError
from aierun.session import Session
from aierun.textstream import StopFilter, TextStream

log = structlog.get_logger("aierun.serve")


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # the most likely tokens, best first


@dataclass(frozen=True)
class Piece:
    """New answer text (possibly empty, while a stop string may be starting) and the
    token it came with."""

    text: str
    logprob: TokenLogprob | None


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Failed:
    status: int
    message: str


@dataclass
class Job:
    ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    top_logprobs: int | None  # None: no logprobs
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)

    def emit(self, event: Piece | Finished | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shutdown): nobody reads
            self.cancelled.set()


class Worker:
    def __init__(self, session: Session, queue_size: int, tokenizer_lock: threading.Lock):
        self.session = session
        self.tokenizer_lock = tokenizer_lock
        self.metrics = Metrics(self.depth)
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._busy = False
        self._stopping = threading.Event()
        self._job_s = 1.0  # smoothed seconds per generation, for Retry-After
        self._thread = threading.Thread(target=self._run, name="aierun-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def depth(self) -> int:
        """Generations queued or running."""
        return self._jobs.qsize() + int(self._busy)

    def submit(self, job: Job) -> None:
        """Queue `job`; a full queue is refused with how long to wait before retrying."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            retry = max(1, math.ceil(self.depth() * self._job_s))
            raise ApiError(
                429,
                f"the server is busy ({self.depth()} generations queued or running); retry "
                f"in about {retry} s",
                kind="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            ) from None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            self._busy = True
            start = time.perf_counter()
            try:
                self._serve(job)
            finally:
                self._busy = False
                self._job_s = 0.7 * self._job_s + 0.3 * (time.perf_counter() - start)

    def _serve(self, job: Job) -> None:
        if job.cancelled.is_set() or self._stopping.is_set():  # its client left while queued
            self.metrics.cancelled.inc()
            return
        # The profiler records every step; a server that runs for days keeps none of it.
        self.session.profiler.clear()
        try:
            finished = self._generate(job)
        except UserError as exc:  # e.g. the context filled up while generating
            job.emit(Failed(400, str(exc)))
            return
        except Exception as exc:  # a bug: logged with its traceback, the server goes on
            log.exception("serve.generation_failed")
            job.emit(Failed(500, f"the generation failed: {type(exc).__name__}: {exc}"))
            return
        job.emit(finished)

    def _generate(self, job: Job) -> Finished:
        session, metrics = self.session, self.metrics
        with self.tokenizer_lock:
            stream = TextStream(session.checkpoint.tokenizer)
        stops = StopFilter(job.stop)
        logits: list[np.ndarray] = []  # the last token's, for its logprob
        hook = logits.append if job.top_logprobs is not None else None
        tokens = session.generate(job.ids, job.max_tokens, job.sampling, on_logits=hook, reuse=True)
        first = last = None
        count, reason = 0, None
        try:
            for token in tokens:
                last = time.perf_counter()
                if first is None:
                    first = last
                    metrics.ttft.observe(first - job.queued_at)
                count += 1
                with self.tokenizer_lock:
                    text = stream.push(token)
                    logprob = self._logprob(logits.pop(), token, job.top_logprobs) if hook else None
                shown, stopped = stops.feed(text)
                job.emit(Piece(shown, logprob))
                if stopped:
                    reason = "stop"
                    break
                # Checked per token: the client has gone, or the server is stopping.
                if job.cancelled.is_set() or self._stopping.is_set():
                    metrics.cancelled.inc()
                    reason = "cancelled"
                    break
        finally:
            tokens.close()
        if reason is None:  # the generation ended by itself: EOS, or max_tokens reached
            with self.tokenizer_lock:
                tail = stream.finish()
            shown, stopped = stops.feed(tail)
            job.emit(Piece(shown + ("" if stopped else stops.flush()), None))
            reason = "stop" if stopped or count < job.max_tokens else "length"
        cached = session.last_reused
        metrics.prompt_tokens.inc(len(job.ids))
        metrics.generated_tokens.inc(count)
        if cached:
            metrics.cache_hits.inc()
            metrics.cached_tokens.inc(cached)
        if count > 1:
            metrics.tpot.observe((last - first) / (count - 1))
        log.info(
            "serve.generation",
            prompt_tokens=len(job.ids),
            cached_tokens=cached,
            tokens=count,
            reason=reason,
            queued_ms=round((time.perf_counter() - job.queued_at) * 1e3, 1),
            ttft_ms=round((first - job.queued_at) * 1e3, 1) if first else None,
        )
        return Finished(reason, len(job.ids), count, cached)

    def _logprob(self, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
        """The model's log-probabilities (before temperature), as OpenAI reports them."""
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        best = np.argpartition(-logprobs, top)[:top] if top else np.array([], int)
        best = best[np.argsort(-logprobs[best])]
        decode = self.session.checkpoint.tokenizer.decode
        return TokenLogprob(
            decode([token]),
            float(logprobs[token]),
            tuple((decode([int(t)]), float(logprobs[t])) for t in best),
        )
