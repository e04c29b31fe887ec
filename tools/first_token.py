"""Seconds from starting `aierun run` to the first byte of its answer on stdout: the
cold start as a user sees it (imports, model, prepare, first prefill), three times.

    .venv/bin/python tools/first_token.py . .venv/bin/python [OPENBLAS_NUM_THREADS=1]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def first_token(checkout: str, python: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["nice", "-n", "10", python, "-m", "aierun.cli", "run"], cwd=checkout,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )  # fmt: skip
    proc.stdout.read(1)
    seconds = time.perf_counter() - start
    proc.stdout.read()  # the rest of the answer: the run ends by itself
    proc.wait(timeout=600)
    return seconds


def main() -> None:
    checkout, python, *settings = sys.argv[1:]
    env = dict(setting.split("=", 1) for setting in settings)
    for _ in range(3):
        seconds = first_token(checkout, python, env)
        print(f"first token after {seconds:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
