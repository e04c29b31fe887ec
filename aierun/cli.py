"""The `aierun` command: run, chat, profile, verify, diagnosis, unpack, pull.

Results go to stdout (for `run`, only the generated text, streamed); logs go to
stderr and to JSON lines under `$AIERUN_HOME/logs`. The doit tasks call `main`
with the same flags, so both front doors behave the same.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from aierun import __version__, logs, paths
from aierun.bundle import cmd_unpack
from aierun.chat_input import HELP, MessageReader
from aierun.errors import STDOUT, Failure, Terminated, UserError, describe
from aierun.host.sampling import Sampling
from aierun.profiling.command import cmd_profile
from aierun.registry import cmd_pull
from aierun.serve.command import cmd_serve
from aierun.session import Session, open_session
from aierun.textstream import TextStream
from aierun.verify.diagnosis import cmd_diagnosis
from aierun.verify.gate import cmd_verify

log = structlog.get_logger("aierun.cli")
# transformers' import-time advice ("PyTorch was not found...") is noise for the
# runtime, which uses it for configs and tokenizers only.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DEFAULT_PROMPT = "What is the capital of Japan?"
# Chat answers get room to finish; a run's default stays short (a quick check).
CHAT_N_TOKENS = 512


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def positive_int(text: str) -> int:
    """An option value of 1 or more (checked before anything is loaded)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An option value of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def finite_float(text: str) -> float:
    """A real number (nan and inf would make every later computation meaningless)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (an interval)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def utf8_text(text: str) -> str:
    """Text that can be tokenized: a command line in another encoding reaches Python
    as undecodable bytes (lone surrogates), refused here with where they are."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise argparse.ArgumentTypeError(
            f"is not UTF-8 text (undecodable byte at character {exc.start + 1}): pass it in "
            "UTF-8 (e.g. convert it with `iconv -t UTF-8`)"
        ) from None
    return text


def sha256_digest(text: str) -> str:
    """A sha256 as `sha256sum` prints it (or `sha256:` and it, as registries write it)."""
    digest = text.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError(
            f"is not a sha256 (64 hex digits, as `doit pack` and `sha256sum` print it): {text}"
        )
    return digest


# How a bundle named by --artifacts (or unpack, pull) is checked before use.
CHECK_OPTIONS = (
    Option("sha256", sha256_digest, None, "refuse the bundle unless its archive has this sha256 "
           "(what `doit pack` printed)"),
    Option("trust", str, None, "allowed-signers file of the keys whose bundle signatures you "
           "trust (default: $AIERUN_HOME/trusted_keys)"),
    Option("require_signed", bool, False, "refuse a bundle without a good signature by a "
           "trusted key (also AIERUN_REQUIRE_SIGNED=1)"),
)  # fmt: skip
RUN_OPTIONS = (
    Option("prompt", utf8_text, DEFAULT_PROMPT,
           "the user prompt (through the chat template, if any)"),
    Option("n_tokens", positive_int, 32, "most tokens to generate (stops earlier at EOS)"),
    Option("device", str, "emu", "emu (numpy emulation, any machine) or npu (XRT, Ryzen AI NPU2)"),
    Option("artifacts", str, None, "a build directory, an unpacked bundle, a bundle archive or "
           "a registry reference HOST/REPO:TAG|@sha256:... (default: "
           "$AIERUN_HOME/targets/<target>)"),
    Option("seq_len", int, None, "force this compiled prefill bucket (the prompt is padded "
           "to it; 2048 times a long prompt)"),
    Option("temperature", finite_float, 0.0, "0 = greedy (default, reproducible); > 0 samples"),
    Option("top_p", finite_float, 1.0, "nucleus sampling mass when sampling"),
    Option("seed", int, 0, "random seed for sampling"),
    *CHECK_OPTIONS,
)  # fmt: skip
PROFILE_OPTIONS = (
    Option("json", str, None, "write the machine-readable profile here"),
    Option("trace", str, None, "write a Chrome/Perfetto trace here"),
    Option("html", str, None, "write a self-contained HTML report here"),
)
REFERENCE_DTYPE = Option(
    "reference_dtype", str, "bfloat16",
    "dtype of the transformers reference: bfloat16 (as deployed) or float32 (exact)",
)  # fmt: skip
VERIFY_OPTIONS = (
    Option("prompts", str, None, "a file with one prompt per line (default: the built-in set)"),
    Option("n_tokens", positive_int, 32, "greedy tokens to generate and check per prompt"),
    Option("k", positive_int, 5, "each of our tokens must be within the reference's top-k"),
    Option("device", str, "emu", "emu or npu"),
    Option("artifacts", str, None, "as for run"),
    *CHECK_OPTIONS,
    Option("json", str, None, "write the verify result here"),
    REFERENCE_DTYPE,
)
DIAGNOSIS_OPTIONS = (
    Option("prompt", utf8_text, DEFAULT_PROMPT, "the prompt to compare layer by layer"),
    Option(
        "threshold", finite_float, 0.99, "cosine similarity below which a layer is reported bad"
    ),
    Option("device", str, "emu", "emu or npu"),
    Option("artifacts", str, None, "as for run"),
    *CHECK_OPTIONS,
    Option("json", str, None, "write the per-layer comparison here"),
    REFERENCE_DTYPE,
)
CHAT_OPTIONS = (
    *(o for o in RUN_OPTIONS if o.name != "prompt"),
    Option("n_tokens", positive_int, CHAT_N_TOKENS,
           "most tokens per answer (an answer cut short is not kept in the conversation)"),
)  # fmt: skip
SERVE_OPTIONS = (
    Option("host", str, "127.0.0.1", "the address to listen on (0.0.0.0: every interface)"),
    Option("port", int, 8000, "the TCP port to listen on (0: any free one, logged)"),
    Option("api_key", str, None, "require `Authorization: Bearer KEY` on /v1/* "
           "(default: $AIERUN_API_KEY, else no key)"),
    Option("queue", positive_int, 32, "most generations queued or running; beyond it 429"),
    Option("max_tokens", positive_int, 512, "tokens per answer when a request gives no max_tokens"),
    Option("keepalive", positive_float, 5.0, "seconds between SSE keep-alive comments"),
    Option("slots", nonnegative_int, 4, "other conversations' cached prefixes kept aside "
           "(LRU; 0: only the one the cache holds)"),
    Option("slot_mb", positive_int, 2048, "most host memory those kept prefixes take, MiB"),
    *(o for o in RUN_OPTIONS if o.name in ("device", "artifacts")),
    *CHECK_OPTIONS,
)  # fmt: skip
UNPACK_OPTIONS = (
    Option("device", str, "emu", "the device the bundle must run on: emu or npu"),
    *CHECK_OPTIONS,
)

COMMANDS: dict[str, tuple[tuple[Option, ...], str]] = {
    "run": (RUN_OPTIONS, "generate text for a prompt, streamed to stdout"),
    "chat": (
        CHAT_OPTIONS,
        'interactive chat: messages on stdin (""" for several lines), answers on stdout; '
        "the conversation stays cached between turns",
    ),
    "profile": (RUN_OPTIONS + PROFILE_OPTIONS, "run once and print the per-step profile report"),
    "verify": (VERIFY_OPTIONS, "top-k gate of our tokens against Hugging Face transformers"),
    "diagnosis": (DIAGNOSIS_OPTIONS, "per-layer hidden-state comparison against transformers"),
    "serve": (
        SERVE_OPTIONS,
        "OpenAI-compatible HTTP server (and a chat page at /), model loaded once",
    ),
    "unpack": (UNPACK_OPTIONS, "check and unpack a bundle; print the directory for --artifacts"),
    "pull": (
        UNPACK_OPTIONS,
        "fetch a bundle from an OCI registry, verify and unpack it; print the directory",
    ),
}


def _options(command: str) -> tuple[Option, ...]:
    options = COMMANDS[command][0]
    return tuple({o.name: o for o in options}.values())  # later duplicates win


def doit_params(command: str) -> list[dict[str, Any]]:
    """The command's flags as doit task parameters (`doit generate --prompt ...`)."""
    # doit reports a failed conversion with a traceback, so it passes every value on
    # as text; `main` converts and checks them with the flags' own types.
    # A switch (bool) stays one: doit gives it no value.
    return [
        {"name": o.name, "long": o.flag[2:], "type": bool if o.type is bool else str,
         "default": o.default, "help": o.help}
        for o in _options(command)
    ]  # fmt: skip


def flags_from_params(values: dict[str, Any], params: list[dict[str, Any]]) -> list[str]:
    argv = []
    for param in params:
        value = values.get(param["name"])
        if value is True and param["type"] is bool:
            argv.append("--" + param["long"])
        elif value is not None and value != param["default"]:
            argv += ["--" + param["long"], str(value)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aierun",
        description="Run, profile and verify Llama-family LLMs on an AMD Ryzen AI NPU "
        "or its numpy emulation, from compiled artifacts or a bundle.",
    )
    parser.add_argument("--version", action="version", version=f"aierun {__version__}")
    parser.add_argument(
        "--log-level", default=None, type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="console log level (default INFO); the JSON log file keeps everything",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == "unpack":
            sub.add_argument("bundle", help="a bundle archive made by `doit pack`")
        elif name == "pull":
            sub.add_argument("reference", help="HOST[:PORT]/REPOSITORY:TAG or HOST[:PORT]/"
                             "REPOSITORY@sha256:DIGEST (published by `doit push`)")  # fmt: skip
        else:
            sub.add_argument("--model", default=None, help="checkpoint directory or cached HF "
                             "model id (default: the embedded SmolLM2-135M-Instruct)")  # fmt: skip
        if name == "profile":  # two files, so not a doit parameter: `doit profile compare=A,B`
            sub.add_argument(
                "--compare", nargs=2, metavar=("A.json", "B.json"), default=None,
                help="run nothing: set two profile JSONs side by side (per step A, B, "
                "difference and ratio), printed and written as text and HTML",
            )  # fmt: skip
        for option in _options(name):
            if option.type is bool:
                sub.add_argument(option.flag, action="store_true", help=option.help)
            else:
                sub.add_argument(
                    option.flag, type=option.type, default=option.default, help=option.help
                )
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    sampling = Sampling(args.temperature, args.top_p, args.seed)
    with open_session(args, prepare=False) as session:
        session.check_prompt(args.prompt, args.n_tokens)
        session.prepare()
        _stream(session, args.prompt, args.n_tokens, sampling, args.seq_len)
    return 0


def _print(text: str) -> None:
    """Answer text to stdout now. A failed write names standard output: an OSError from
    write() carries no file name, and the message would otherwise blame a file of ours."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, STDOUT) from None


def _stream(
    session: Session,
    prompt: str | list[int],
    n_tokens: int,
    sampling: Sampling,
    seq_len: int | None,
    reuse: bool = False,
) -> tuple[list[int], float | None]:
    """Print the answer as it comes; returns the generated ids and the seconds to the
    first token. Interrupted (Ctrl-C), the text shown so far stays and the line is
    ended."""
    stream = TextStream(session.checkpoint.tokenizer)
    start = time.perf_counter()
    first = last = None
    try:
        for token in session.generate(prompt, n_tokens, sampling, seq_len, reuse=reuse):
            last = time.perf_counter()
            first = first or last
            _print(stream.push(token))
    except KeyboardInterrupt:
        _print("\n")
        raise
    _print(stream.finish() + "\n")
    tokens = stream.tokens
    log.info(  # the run's one console line (the JSON log has every step)
        "run.done",
        load_s=round(session.prepare_s, 2) if session.prepare_s is not None else None,
        prompt_tokens=session.last_prompt_tokens,
        cached_tokens=session.last_reused,
        tokens=len(tokens),
        ttft_ms=round((first - start) * 1e3, 1) if first else None,
        decode_tok_s=round((len(tokens) - 1) / (last - first), 2) if len(tokens) > 1 else None,
    )
    return tokens, (first - start if first else None)


def cmd_chat(args: argparse.Namespace) -> int:
    """A multi-turn chat. The session keeps the conversation's K/V between turns, so a
    turn computes its new tokens only (when that is cheaper than a prefill). Log
    lines (one `chat.turn` per turn, with its TTFT) go to the log file only, so they
    do not interleave with the conversation."""

    sampling = Sampling(args.temperature, args.top_p, args.seed)
    n_tokens = args.n_tokens
    if sys.stdin is None or sys.stdin.closed:
        raise UserError("chat reads its messages from standard input, which is closed: "
                        "run it in a terminal or pipe the messages in")  # fmt: skip
    reader = MessageReader()
    with logs.console_quiet(), open_session(args) as session:
        messages: list[dict[str, str]] = []
        print(HELP, file=sys.stderr)
        while (message := reader.read()) is not None:
            messages.append({"role": "user", "content": message})
            try:
                ids = session.checkpoint.encode_chat(messages)
                tokens, ttft = _stream(session, ids, n_tokens, sampling, args.seq_len, reuse=True)
            except UserError as exc:  # e.g. the conversation outgrew the context
                print(f"aierun chat: {exc} This message was dropped.", file=sys.stderr)
                messages.pop()
                continue
            log.info(
                "chat.turn",
                turn=len(messages) // 2 + 1,
                message_chars=len(message),
                prompt_tokens=len(ids),
                cached_tokens=session.last_reused,
                ttft_ms=round(ttft * 1e3, 1) if ttft is not None else None,
            )
            if len(tokens) >= n_tokens:  # no end of turn: the answer was cut short
                print(f"aierun chat: the answer was cut at {n_tokens} tokens (--n-tokens) and "
                      "is not kept in the conversation.", file=sys.stderr)  # fmt: skip
                messages.pop()
                continue
            text = session.checkpoint.tokenizer.decode(tokens, skip_special_tokens=True)
            messages.append({"role": "assistant", "content": text})
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "chat": cmd_chat,
    "profile": cmd_profile,
    "verify": cmd_verify,
    "diagnosis": cmd_diagnosis,
    "serve": cmd_serve,
    "unpack": cmd_unpack,
    "pull": cmd_pull,
}


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP end it as Ctrl-C does
    (errors.Terminated): the output line is ended and the user told why, instead of a
    silent death. The previous handlers come back afterwards (doit and the tests call
    `main` in their own process)."""

    def stop(signum: int, frame: object) -> None:
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths.check_home()
        logs.configure(paths.logs_dir(), args.log_level)
        with _stopping_on_signals():
            return HANDLERS[args.command](args)
    except BaseException as exc:
        failure = describe(exc)
        if failure is None:  # a bug: its traceback is what a report needs
            raise
        return _report(args.command, exc, failure)


def _report(command: str, exc: BaseException, failure: Failure) -> int:
    """Say what went wrong, once, on stderr; the JSON log records it too."""
    if isinstance(exc, BrokenPipeError):
        # The reader of stdout is gone: nothing more to say, and nothing may be
        # flushed into the closed pipe at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return failure.code
    log.debug(f"{command}.failed", error=failure.message, exit_code=failure.code)
    print(f"aierun {command}: {failure.message}", file=sys.stderr)
    return failure.code


if __name__ == "__main__":
    sys.exit(main())
