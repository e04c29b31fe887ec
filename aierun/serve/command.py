"""`aierun serve`: bind the address, load the model once, serve until Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import os
import socket

import structlog

from aierun.errors import UserError
from aierun.host.prefix_slots import PrefixSlots
from aierun.session import open_session

log = structlog.get_logger("aierun.serve")


def cmd_serve(args: argparse.Namespace) -> int:
    # The HTTP stack is imported here, not with the command line: `aierun run` never
    # pays for it at start.
    import uvicorn

    from aierun.serve.app import build_app

    sock = _bind(args.host, args.port)  # a taken port fails now, not after the model loads
    api_key = args.api_key or os.environ.get("AIERUN_API_KEY") or None
    with sock, open_session(args) as session:
        session.slots = PrefixSlots(args.slots, args.slot_mb << 20)
        app = build_app(session, api_key, args.queue, args.max_tokens, args.keepalive)
        host, port = sock.getsockname()[:2]
        log.info(
            "serve.ready",
            url=f"http://{host}:{port}",
            model=session.checkpoint.name,
            buckets=list(session.artifacts.buckets),
            context=session.context,
            queue=args.queue,
            prefix_slots=args.slots,
            slot_mb=args.slot_mb,
            kv_cache_mb=round(session.context * session.kv_bytes_per_position / 2**20, 1),
            kv_mb_per_1k_tokens=round(session.kv_bytes_per_position * 1000 / 2**20, 1),
            api_key=api_key is not None,
        )
        config = uvicorn.Config(
            app, log_config=None, timeout_graceful_shutdown=5, ws="none", lifespan="on"
        )
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        advice = "pass another --port" if exc.errno == errno.EADDRINUSE else "check --host"
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; {advice}."
        ) from None
    except OverflowError:
        sock.close()
        raise UserError(f"--port {port}: a port is between 0 and 65535") from None
    return sock
