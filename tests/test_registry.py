"""Bundles through a real OCI registry (the CNCF distribution server on 127.0.0.1,
tests/conftest.py): `doit push`, `aierun pull` by tag and by digest, `--artifacts` by
digest, and every way a registry can fail us ending in one message (exit 2)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aiebuild.bundle import pack
from aiebuild.push import push, push_build
from aiebuild.tasks import BuildConfig
from aierun import cli, registry
from aierun.bundle import open_bundle
from aierun.files import sha256_file
from aierun.registry import Reference
from aierun.session import Sampling
from aierun.signatures import NAMESPACE, sign

pytestmark = pytest.mark.registry
ROOT = str(Path(__file__).resolve().parents[1])  # this tree's aierun, wherever the cwd is
WITHOUT_AIEBUILD = (
    "import sys; sys.modules['aiebuild'] = None; "
    "from aierun.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, runtime_home, emu_manifest) -> Path:
    return pack(runtime_home, "emu", tmp_path_factory.mktemp("packed") / "smol-emu.tar.gz")


@pytest.fixture(scope="module")
def pushed(oci_registry, bundle) -> Reference:
    """The bundle at HOST/aie/smollm2:emu; the reference by digest."""
    return push(bundle, Reference.parse(f"{oci_registry.host}/aie/smollm2:emu"))


@pytest.fixture
def other_home(tmp_path, monkeypatch) -> Path:
    """A second runtime home with no build, as on a machine with only the runtime."""
    home = tmp_path / "other-home"
    monkeypatch.setenv("AIERUN_HOME", str(home))
    return home


def pull(capsys, reference: str, *flags: str) -> tuple[int, str]:
    """Exit code and what the user sees: the printed directory or the one message."""
    code = cli.main(["pull", reference, *flags])
    captured = capsys.readouterr()
    return code, captured.out.splitlines()[-1] if code == 0 else captured.err


@pytest.mark.slow
def test_run_pulls_a_digest_on_first_use(tmp_path, pushed, session, model_dir):
    """`aierun run --artifacts HOST/REPO@sha256:...` on a home with no build, by a
    Python that cannot import aiebuild, answers as the build's own artifacts do.
    (First in the module: the in-process session logs before any cli.main has
    pointed the log console at a test's captured stderr.)"""
    prompt = "What is the capital of Japan?"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIEBUILD, "run", "--artifacts", str(pushed),
         "--n-tokens", "6", "--prompt", prompt, "--model", str(model_dir)],
        cwd=tmp_path, env={**os.environ, "AIERUN_HOME": str(tmp_path / "home"), "PYTHONPATH": ROOT},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tokens = list(session.generate(prompt, 6, Sampling()))
    assert (
        result.stdout
        == session.checkpoint.tokenizer.decode(tokens, skip_special_tokens=True) + "\n"
    )
    assert "Tokyo" in result.stdout


def test_push_then_pull_by_tag_and_by_digest(oci_registry, pushed, bundle, other_home, capsys):
    code, by_tag = pull(capsys, f"{oci_registry.host}/aie/smollm2:emu")
    assert code == 0 and Path(by_tag) == other_home / "bundles" / sha256_file(bundle)
    assert (Path(by_tag) / "manifest.json").is_file()
    assert pull(capsys, str(pushed)) == (0, by_tag)
    blobs = other_home / "oci" / "blobs" / "sha256"
    assert (blobs / sha256_file(bundle)).read_bytes() == bundle.read_bytes()
    assert not [p for p in blobs.iterdir() if p.name.startswith(".")]  # no temporaries


def test_the_manifest_carries_our_media_types_and_annotations(pushed, bundle):
    raw = registry.fetch_manifest(registry.client_for(pushed.host), pushed)
    manifest = registry.parse_manifest(raw, pushed)
    assert manifest["config"]["mediaType"] == registry.CONFIG_MEDIA_TYPE
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == registry.BUNDLE_MEDIA_TYPE
    assert layer["digest"] == f"sha256:{sha256_file(bundle)}"  # the digest `doit pack` prints
    annotations = manifest["annotations"]
    assert annotations["org.aie-llm.model"] == "SmolLM2-135M-Instruct"
    assert (annotations["org.aie-llm.target"], annotations["org.aie-llm.toolchain"]) == (
        "emu", '{"emu":1}',
    )  # fmt: skip


def test_a_digest_pulled_before_needs_no_registry(pushed, other_home, capsys, monkeypatch):
    assert pull(capsys, str(pushed))[0] == 0

    def offline(host):
        raise AssertionError(f"the registry {host} was asked again")

    monkeypatch.setattr(registry, "client_for", offline)
    assert pull(capsys, str(pushed))[0] == 0


def test_a_tampered_blob_is_refused(oci_registry, pushed, bundle, other_home, capsys):
    stored = oci_registry.blob_file(f"sha256:{sha256_file(bundle)}")
    original = stored.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01  # same size: the registry serves it as is
    stored.write_bytes(bytes(damaged))
    try:
        code, err = pull(capsys, str(pushed))
    finally:
        stored.write_bytes(original)
    assert code == 2 and "does not match its digest" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    blobs = other_home / "oci" / "blobs" / "sha256"
    assert not (blobs / sha256_file(bundle)).exists()
    assert not [p for p in blobs.iterdir() if p.name.startswith(".")]


def test_a_digest_the_registry_does_not_match_is_refused(pushed, other_home, capsys):
    wrong = pushed.pinned("sha256:" + "0" * 64)
    code, err = pull(capsys, str(wrong))
    assert code == 2 and "HTTP 404" in err  # the registry checks digests too


def test_a_missing_tag_says_how_to_publish(oci_registry, other_home, capsys):
    code, err = pull(capsys, f"{oci_registry.host}/aie/nothing:emu")
    assert code == 2 and "doit push ref=" in err


def test_a_registry_that_is_down_is_one_message(other_home, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, err = pull(capsys, f"127.0.0.1:{port}/aie/smollm2:emu")
    assert code == 2
    assert err == (
        f"aierun pull: cannot reach the registry 127.0.0.1:{port} (ConnectionError): check the "
        "address and that the registry is running.\n"
    )


class Garbage(http.server.BaseHTTPRequestHandler):
    status, body = 200, b"<html>not a registry</html>"

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


class ServerError(Garbage):
    status, body = 500, b'{"errors": [{"message": "boom"}]}'


class WrongDocument(Garbage):
    body = b'{"mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {}}'


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(handler) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (Garbage, "answered with something that is not an OCI manifest (not JSON)"),
        (ServerError, "the registry answered HTTP 500 for the manifest"),
        (WrongDocument, "it is not an aie-llm bundle"),
    ],
)
def test_a_registry_that_answers_garbage_is_one_message(
    serve, handler, message, other_home, capsys
):
    code, err = pull(capsys, f"{serve(handler)}/aie/smollm2:emu")
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_concurrent_pulls_of_one_digest(pushed, bundle, other_home):
    """Eight pulls at once into one home: each ends with the same intact directory,
    and no temporary is left in the blob store or the unpacked bundles."""

    def pull_and_open(_):
        pulled = registry.pull(pushed)
        return open_bundle(pulled.bundle, other_home / "bundles", ("emu",))

    with ThreadPoolExecutor(8) as pool:
        results = set(pool.map(pull_and_open, range(8)))
    assert results == {other_home / "bundles" / sha256_file(bundle)}
    for directory in (other_home / "oci" / "blobs" / "sha256", other_home / "bundles"):
        assert not [p for p in directory.iterdir() if p.name.startswith(".")]


def allowed(principal: str, key: Path) -> str:
    """An allowed-signers line trusting `key` for bundles."""
    return f'{principal} namespaces="{NAMESPACE}" {key.with_suffix(".pub").read_text()}'


def test_a_signed_push_is_verified_on_pull(
    oci_registry, tmp_path, bundle, runtime_home, model_dir, other_home, capsys
):
    signed = Path(shutil.copy(bundle, tmp_path / bundle.name))
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sign(signed, key)
    trust = tmp_path / "allowed_signers"
    trust.write_text(
        f'ci@example.org namespaces="{NAMESPACE}" {key.with_suffix(".pub").read_text()}'
    )
    reference = push(signed, Reference.parse(f"{oci_registry.host}/aie/signed:emu"))
    assert pull(capsys, str(reference), "--trust", str(trust), "--require-signed")[0] == 0
    other = tmp_path / "other-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    trust.write_text(
        f'x@example.org namespaces="{NAMESPACE}" {other.with_suffix(".pub").read_text()}'
    )
    code, err = pull(capsys, str(reference), "--trust", str(trust))
    assert code == 2 and "which is not among the trusted keys" in err


def test_an_unsigned_push_is_refused_under_the_policy(pushed, other_home, capsys):
    code, err = pull(capsys, str(pushed), "--require-signed")
    assert code == 2 and "it is unsigned and signatures are required" in err


def test_doit_push_needs_a_tag(runtime_home, model_dir, emu_manifest):
    config = BuildConfig(runtime_home, str(model_dir), (64, 128), "emu")
    with pytest.raises(Exception, match=r"HOST\[:PORT\]/REPOSITORY:TAG"):
        push_build(config, "127.0.0.1:5000/aie/smollm2")
