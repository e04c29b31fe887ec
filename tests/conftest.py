"""Shared fixtures: one materialized default model and one emu build per test run.

The model is taken from the checkout's build/models when `doit model` already made
it, else materialized once into a temporary runtime home. Emu artifacts are
compiled with the real build code (aiebuild) into that home, with a small bucket
set so the tests stay fast. The registry tests get a real OCI registry server,
started here on 127.0.0.1 (so CI starts nothing itself).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiebuild.tasks import BuildConfig, compile_all
from aierun import default_model
from aierun.artifacts import ArtifactSet
from aierun.devices.emu import EmuDevice
from aierun.model import Checkpoint
from aierun.session import Session

ROOT = Path(__file__).resolve().parents[1]
TEST_BUCKETS = (64, 128)


@pytest.fixture(scope="session")
def runtime_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("aierun-home")
    os.environ["AIERUN_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def model_dir(runtime_home) -> Path:
    built = ROOT / "build" / "models" / default_model.NAME
    if default_model.is_materialized(built):
        return built
    return default_model.materialize(runtime_home / "models" / default_model.NAME)


@pytest.fixture(scope="session")
def checkpoint(model_dir) -> Checkpoint:
    return Checkpoint(model_dir)


def compile_emu(home: Path, model: Path, buckets=TEST_BUCKETS) -> Path:
    """Build emu artifacts for `model` into `home` with the build system's own code."""
    return compile_all(BuildConfig(home, str(model), tuple(buckets), "emu"))


@pytest.fixture(scope="session")
def emu_manifest(runtime_home, model_dir) -> Path:
    return compile_emu(runtime_home, model_dir)


@pytest.fixture(scope="module")
def session(checkpoint, emu_manifest) -> Session:
    """A prepared emu Session on the default model (shared within a test module)."""
    session = Session(checkpoint, ArtifactSet.open(emu_manifest), EmuDevice())
    session.prepare()
    return session


@dataclass(frozen=True)
class OciRegistry:
    host: str  # 127.0.0.1:PORT
    storage: Path  # the server's filesystem storage (tests tamper with blobs there)

    def blob_file(self, digest: str) -> Path:
        """Where the CNCF distribution server keeps a blob's bytes."""
        hex_digest = digest.removeprefix("sha256:")
        return self.storage / f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"


REGISTRY_SERVERS = ("docker-registry", "registry")  # Debian's name, upstream's
REGISTRY_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
http:
  addr: 127.0.0.1:{port}
"""


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory) -> Iterator[OciRegistry]:
    """A real OCI registry (the CNCF distribution server, Debian's docker-registry) on a
    free 127.0.0.1 port, with its own config and storage, stopped at the end."""
    server = next(filter(None, map(shutil.which, REGISTRY_SERVERS)), None)
    if server is None:
        pytest.skip("no OCI registry server: install Debian's docker-registry package "
                    "(tools/install.sh --dev does, as root with apt-get)")  # fmt: skip
    root = tmp_path_factory.mktemp("oci-registry")
    for _ in range(3):  # a free port may be taken between choosing and binding it
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = root / "config.yml"
        config.write_text(REGISTRY_CONFIG.format(storage=root / "storage", port=port))
        log = (root / "server.log").open("w")
        process = subprocess.Popen([server, "serve", str(config)], stdout=log, stderr=log)
        if _answers(f"http://127.0.0.1:{port}/v2/", process):
            break
        process.kill()
        process.wait()
    else:
        pytest.fail(f"the registry server did not start: {(root / 'server.log').read_text()}")
    try:
        yield OciRegistry(f"127.0.0.1:{port}", root / "storage")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _answers(url: str, process: subprocess.Popen, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.05)
    return False
