"""`doit compile cache=HOST/REPO` against a real OCI registry (tests/conftest.py): a
build pushes every entry it compiles, a second clean build fetches every one and
compiles none, and a tampered, wrong, unreachable or garbage cache ends in a warning
and a local build."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import TEST_BUCKETS
from structlog.testing import capture_logs

from aiebuild.oci import oras_push
from aiebuild.remote_cache import ENTRY_CONFIG_MEDIA_TYPE, ENTRY_MEDIA_TYPE, entry_tar
from aiebuild.store import Store
from aiebuild.tasks import BuildConfig, compile_all
from aierun import registry
from aierun.artifacts import ENTRY_META, ArtifactSet, verify_entry

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[1]


def compile_with_cache(home: Path, model: Path, cache: str) -> tuple[Path, dict, list[dict]]:
    """Compile emu into `home` with the cache; the manifest, the summary line's event
    and every warning logged."""
    with capture_logs() as logs:
        manifest = compile_all(BuildConfig(home, str(model), TEST_BUCKETS, "emu", cache=cache))
    (summary,) = [e for e in logs if e["event"] == "compile.cache_summary"]
    return manifest, summary, [e for e in logs if e["log_level"] == "warning"]


def keys(manifest: Path) -> set[str]:
    return set(json.loads(manifest.read_text())["elfs"].values())


def counts(summary: dict) -> tuple[int, int, int, int]:
    return summary["fetched"], summary["built"], summary["pushed"], summary["refused"]


@pytest.fixture(scope="module")
def cache(oci_registry) -> str:
    return f"{oci_registry.host}/aie/cache"


@pytest.fixture(scope="module")
def build_a(tmp_path_factory, model_dir, cache) -> Path:
    """Build dir A, compiled with the cache empty: every entry built and pushed."""
    manifest, summary, warnings = compile_with_cache(
        tmp_path_factory.mktemp("build-a"), model_dir, cache
    )
    n = len(keys(manifest))
    assert n > 5 and counts(summary) == (0, n, n, 0) and not warnings, (summary, warnings)
    return manifest


def test_a_second_clean_build_fetches_every_entry(tmp_path, build_a, model_dir, cache):
    manifest, summary, warnings = compile_with_cache(tmp_path / "build-b", model_dir, cache)
    n = len(keys(manifest))
    assert counts(summary) == (n, 0, 0, 0) and not warnings, (summary, warnings)
    assert keys(manifest) == keys(build_a)
    artifacts = ArtifactSet.open(manifest)
    for instance in artifacts.instances:  # B's entries load as A's do, byte for byte
        artifact = artifacts.load(instance)
        original = ArtifactSet.open(build_a).load(instance)
        for name, path in artifact.files.items():
            assert path.read_bytes() == original.files[name].read_bytes()
    store = tmp_path / "build-b" / "cache" / "emu"
    assert not [p.name for p in store.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def layer_digest(cache: str, key: str) -> str:
    reference = registry.Reference.parse(f"{cache}:{key}")
    raw = registry.fetch_manifest(registry.client_for(reference.host), reference)
    (layer,) = json.loads(raw)["layers"]
    assert layer["mediaType"] == ENTRY_MEDIA_TYPE
    return layer["digest"]


def test_a_tampered_blob_is_refused_and_built_here(
    tmp_path, oci_registry, build_a, model_dir, cache
):
    key = sorted(keys(build_a))[0]
    stored = oci_registry.blob_file(layer_digest(cache, key))
    original = stored.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01  # same size: the registry serves it as is
    stored.write_bytes(bytes(damaged))
    try:
        manifest, summary, warnings = compile_with_cache(tmp_path / "c", model_dir, cache)
    finally:
        stored.write_bytes(original)
    n = len(keys(manifest))
    assert counts(summary)[:2] == (n - 1, 1) and summary["refused"] == 1, summary
    (warning,) = warnings
    assert warning["event"] == "compile.cache_refused" and warning["key"] == key[:12]
    assert "does not match its digest" in warning["reason"]
    verify_entry(Store(tmp_path / "c", "emu").entry(key))


def test_a_wrong_entry_under_a_key_is_refused(tmp_path, oci_registry, build_a, model_dir):
    """Another entry pushed under a key (self-consistent, just not this key's) is refused:
    its directory would not be named by its key."""
    wrong_cache = f"{oci_registry.host}/aie/wrong"
    first, second = sorted(keys(build_a))[:2]
    entry = Store(build_a.parents[2], "emu").entry(first)
    with tempfile.TemporaryDirectory() as scratch:
        tar = Path(scratch) / "entry.tar"
        tar.write_bytes(entry_tar(entry, verify_entry(entry)))
        reference = registry.Reference.parse(f"{wrong_cache}:{second}")
        oras_push(reference, [f"{tar}:{ENTRY_MEDIA_TYPE}"],
                  f"{entry / ENTRY_META}:{ENTRY_CONFIG_MEDIA_TYPE}", {})  # fmt: skip
    manifest, summary, warnings = compile_with_cache(tmp_path / "d", model_dir, wrong_cache)
    n = len(keys(manifest))
    assert (summary["fetched"], summary["built"], summary["refused"]) == (0, n, 1), summary
    (warning,) = warnings
    assert warning["key"] == second[:12] and "not the entry of its key" in warning["reason"]
    verify_entry(Store(tmp_path / "d", "emu").entry(second))


def test_a_registry_that_is_down_is_one_warning_and_a_local_build(tmp_path, model_dir):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"127.0.0.1:{port}/aie/cache"
    manifest, summary, warnings = compile_with_cache(tmp_path / "e", model_dir, down)
    n = len(keys(manifest))
    assert counts(summary) == (0, n, 0, 0) and summary["unavailable"], summary
    (warning,) = warnings
    assert warning["event"] == "compile.cache_unavailable"
    assert "cannot reach the registry" in warning["reason"]
    for instance in ArtifactSet.open(manifest).instances:
        ArtifactSet.open(manifest).load(instance)


class Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b"<html>not a registry</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_registry_that_answers_garbage_is_one_warning(tmp_path, model_dir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        garbage = f"127.0.0.1:{server.server_address[1]}/aie/cache"
        manifest, summary, warnings = compile_with_cache(tmp_path / "g", model_dir, garbage)
    finally:
        server.shutdown()
        server.server_close()
    assert counts(summary) == (0, len(keys(manifest)), 0, 0), summary
    (warning,) = warnings
    assert "not an OCI manifest" in warning["reason"]


def doit_compile(build: Path, *variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doit", "compile", *variables],
        cwd=ROOT, env={**os.environ, "AIE_BUILD_DIR": str(build)},
        capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_doit_compile_cache_logs_the_counts(tmp_path, build_a, model_dir, cache):
    """`doit compile cache=...` on a clean build directory: every entry fetched, none
    built, said in the summary line."""
    variables = (f"model={model_dir}", "buckets=64,128", "target=emu")
    result = doit_compile(tmp_path / "f", *variables, f"cache={cache}")
    assert result.returncode == 0, result.stderr
    n = len(keys(build_a))
    (summary,) = [line for line in result.stderr.splitlines() if "compile.cache_summary" in line]
    assert f"fetched={n}" in summary and "built=0" in summary, summary
    assert result.stderr.count("compile.cache_hit") == n
    bad = doit_compile(tmp_path / "h", *variables, "cache=127.0.0.1:5000/aie/cache:tag")
    assert bad.returncode != 0 and "HOST[:PORT]/REPOSITORY, without a tag" in bad.stderr
