"""Bundles in an OCI registry: `aierun pull HOST/REPO:TAG|@sha256:...`, and
`--artifacts HOST/REPO@sha256:...`, which pulls on first use.

A bundle is published (`doit push`, aiebuild/push.py) as an OCI artifact, the way
ORAS stores non-container content under the OCI distribution spec: one image
manifest whose config is the bundle's bundle.json (media type CONFIG_MEDIA_TYPE),
whose first layer is the bundle archive itself (BUNDLE_MEDIA_TYPE, so the layer's
digest is the sha256 `doit pack` prints) and, when the bundle was signed, a second
layer holding its OpenSSH signature (SIGNATURE_MEDIA_TYPE). The manifest is
annotated with the model, target, schema and toolchain (ANNOTATIONS).

Nothing a registry sends is trusted: the manifest must hash to the digest asked for
(a digest reference) and every blob to its descriptor's digest and size, before it
is kept; the bundle is then checked as any other (aierun.bundle, aierun.signatures).
What was pulled stays in `$AIERUN_HOME/oci/blobs/sha256/<hex>` (the blob store of an
OCI image layout), so a digest reference already pulled is used without the network.

The client is the ORAS Python SDK (oras-py): its Docker-config credentials and token
authentication, with requests bounded in time and without its retry waits.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oras.auth
import oras.container
import oras.provider
import requests
import requests.adapters
import structlog

from aierun import paths
from aierun.bundle import max_unpacked_bytes, open_bundle
from aierun.errors import UserError
from aierun.files import sha256_file
from aierun.signatures import Trust

log = structlog.get_logger("aierun.registry")

ARTIFACT_TYPE = "application/vnd.aie-llm.bundle.v1"
CONFIG_MEDIA_TYPE = "application/vnd.aie-llm.bundle.config.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.aie-llm.bundle.v1.tar+gzip"
SIGNATURE_MEDIA_TYPE = "application/vnd.aie-llm.bundle.signature.v1.sshsig"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ANNOTATION_PREFIX = "org.aie-llm."
ANNOTATIONS = ("model", "target", "schema", "toolchain")
# The distribution spec has registries accept manifests up to 4 MiB: ours are ~1 KiB.
MAX_MANIFEST_BYTES = 4 * 2**20
MAX_SIGNATURE_BYTES = 64 * 2**10
TIMEOUT_S = 30.0
# Registries reached over plain HTTP, besides loopback ones (Docker's
# "insecure-registries" setting): HOST:PORT,HOST:PORT.
PLAIN_HTTP_ENV = "AIERUN_PLAIN_HTTP_REGISTRIES"
# HOST[:PORT]/repo[/more]:tag or @sha256:hex. The host must look like one (a dot, a
# port or "localhost", as Docker decides), so a relative path is never taken for it.
_REFERENCE = re.compile(
    r"(?P<host>(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?)"
    r"/(?P<repository>[a-z0-9]+(?:(?:[._]|__|-+|/)[a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
PULL_AGAIN = "check the reference and the registry, then pull again"


class RegistryError(UserError):
    """The registry could not be reached or sent something that is not our bundle."""


class NotFound(RegistryError):
    """The registry has no manifest under the reference (HTTP 404)."""


@dataclass(frozen=True)
class Reference:
    """A bundle in a registry: `host/repository:tag` or `host/repository@sha256:hex`."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>" of the manifest

    @classmethod
    def parse(cls, text: str) -> Reference | None:
        """The reference `text` spells, or None when it is no registry reference."""
        match = _REFERENCE.fullmatch(text)
        if match is None or not (match["tag"] or match["digest"]):
            return None
        host = match["host"]
        if not ("." in host or ":" in host or host == "localhost" or host.startswith("[")):
            return None
        return cls(host, match["repository"], match["tag"], match["digest"])

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}" + (
            f"@{self.digest}" if self.digest else f":{self.tag}"
        )

    def pinned(self, digest: str) -> Reference:
        """The same repository by manifest digest: what to write down to get these bytes."""
        return Reference(self.host, self.repository, None, digest)


@dataclass(frozen=True)
class Pulled:
    reference: Reference  # pinned: by the manifest's digest
    bundle: Path
    signature: Path | None
    annotations: dict[str, str]


class _Client(oras.provider.Registry):
    """oras-py's registry client without its retry loop: it retries any failure five
    times, waiting 3 s to 83 s in between (two minutes), and a registry that is down
    must be reported at once. oras 0.2.43's decorator keeps the plain method as
    `__wrapped__` (functools.wraps)."""

    do_request = oras.provider.Registry.do_request.__wrapped__


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """Every request bounded in time (requests waits forever by default): a registry
    that accepts the connection and then says nothing must not hang the command."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        kwargs["timeout"] = kwargs.get("timeout") or TIMEOUT_S
        return super().send(request, **kwargs)


def client_for(host: str) -> oras.provider.Registry:
    """An oras-py client for `host`: HTTPS, except loopback hosts and those listed in
    $AIERUN_PLAIN_HTTP_REGISTRIES (plain HTTP, as Docker treats them)."""
    client = _Client(hostname=host, insecure=plain_http(host))
    for scheme in ("http://", "https://"):
        client.session.mount(scheme, _TimeoutAdapter())
    return client


def plain_http(host: str) -> bool:
    listed = {h.strip() for h in os.environ.get(PLAIN_HTTP_ENV, "").split(",") if h.strip()}
    if host in listed:
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def blobs_dir() -> Path:
    return paths.home() / "oci" / "blobs" / "sha256"


def pull(reference: Reference) -> Pulled:
    """The bundle (and its signature, if any) that `reference` names, each checked
    against its digest; a digest reference pulled before is used without the network."""
    store = blobs_dir()
    local = _cached_manifest(reference, store)
    if local is not None:
        log.info("pull.cached", reference=str(reference))
        return _pulled(reference, *local, store, client=None)
    client = client_for(reference.host)
    raw = fetch_manifest(client, reference)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if reference.digest is not None and digest != reference.digest:
        raise refuse(reference, f"the registry sent a manifest whose digest is {digest}")
    manifest = parse_manifest(raw, reference)
    pulled = _pulled(reference, digest, manifest, store, client)
    _keep(store, digest, raw)  # last: a kept manifest means its blobs are all there
    log.info("pull.done", reference=str(reference), pinned=str(pulled.reference),
             bundle_sha256=pulled.bundle.name)  # fmt: skip
    return pulled


def _pulled(
    reference: Reference,
    digest: str,
    manifest: dict[str, Any],
    store: Path,
    client: oras.provider.Registry | None,
) -> Pulled:
    bundle, signature = _layers(manifest, reference)
    bundle_path = fetch_blob(client, reference, bundle, store, max_unpacked_bytes())
    signature_path = (
        fetch_blob(client, reference, signature, store, MAX_SIGNATURE_BYTES) if signature else None
    )
    annotations = manifest.get("annotations") or {}
    return Pulled(reference.pinned(digest), bundle_path, signature_path, annotations)


def _cached_manifest(reference: Reference, store: Path) -> tuple[str, dict[str, Any]] | None:
    """A digest reference's manifest kept by an earlier pull, and intact."""
    if reference.digest is None:
        return None  # a tag may have moved: ask the registry
    path = store / reference.digest.removeprefix("sha256:")
    if not path.is_file() or "sha256:" + sha256_file(path) != reference.digest:
        return None
    try:
        return reference.digest, parse_manifest(path.read_bytes(), reference)
    except RegistryError:
        return None


def fetch_manifest(client: oras.provider.Registry, reference: Reference) -> bytes:
    container = oras.container.Container(str(reference))
    url = f"{client.prefix}://{container.manifest_url()}"
    response = _request(client, reference, url, {"Accept": MANIFEST_MEDIA_TYPE})
    with response:
        if response.status_code == 404:
            raise NotFound(
                f"{reference}: the registry has no such bundle (HTTP 404). Check the "
                f"repository and tag, or publish it there with `doit push ref={reference}`."
            )
        _check_status(response, reference, "the manifest")
        raw = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise refuse(reference, f"its manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    return raw


def parse_manifest(
    raw: bytes,
    reference: Reference,
    config_type: str = CONFIG_MEDIA_TYPE,
    artifact_type: str = ARTIFACT_TYPE,
    advice: str = "name a bundle published by `doit push`",
) -> dict[str, Any]:
    """The OCI image manifest `raw`, refused unless it holds our kind of artifact (its
    config's media type or its artifactType): a bundle by default."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise refuse(reference, "the registry answered with something that is not an OCI "
                      "manifest (not JSON)") from None  # fmt: skip
    if not isinstance(manifest, dict) or manifest.get("mediaType") != MANIFEST_MEDIA_TYPE:
        raise refuse(reference, "the registry answered with something that is not an OCI "
                      "image manifest")  # fmt: skip
    config = manifest.get("config")
    kind = config.get("mediaType") if isinstance(config, dict) else None
    if kind != config_type and manifest.get("artifactType") != artifact_type:
        what = "bundle" if artifact_type == ARTIFACT_TYPE else "artifact of this kind"
        raise refuse(
            reference, f"it is not an aie-llm {what} (its config is {kind!r}, not {config_type})",
            advice,
        )  # fmt: skip
    return manifest


def _layers(
    manifest: dict[str, Any], reference: Reference
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The bundle layer and the signature layer (None if unsigned), descriptors checked."""
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
        raise refuse(reference, "its manifest has no layer list")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for descriptor in layers:
        by_type.setdefault(descriptor.get("mediaType"), []).append(descriptor)
    bundles, signatures = by_type.get(BUNDLE_MEDIA_TYPE, []), by_type.get(SIGNATURE_MEDIA_TYPE, [])
    if len(bundles) != 1 or len(signatures) > 1:
        counts = f"{len(bundles)} and {len(signatures)}"
        raise refuse(reference, f"its manifest must hold one {BUNDLE_MEDIA_TYPE} layer and "
                      f"at most one signature, not {counts}")  # fmt: skip
    for descriptor in (*bundles, *signatures):
        check_descriptor(descriptor, reference)
    return bundles[0], (signatures[0] if signatures else None)


def check_descriptor(descriptor: dict[str, Any], reference: Reference) -> None:
    """A layer descriptor names its blob by a sha256 and gives a valid size."""
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not re.fullmatch("sha256:[0-9a-f]{64}", digest):
        raise refuse(reference, f"its manifest names a layer by {digest!r}, not a sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise refuse(reference, f"its manifest gives layer {digest} no valid size")


def fetch_blob(
    client: oras.provider.Registry | None,
    reference: Reference,
    descriptor: dict[str, Any],
    store: Path,
    limit: int,
) -> Path:
    """The blob `descriptor` names, from the local store when intact, else downloaded
    into a private temporary and renamed into place only once its size and digest
    match (concurrent pulls of one digest each write their own, same bytes)."""
    digest, size = descriptor["digest"], descriptor["size"]
    path = store / digest.removeprefix("sha256:")
    if path.is_file() and path.stat().st_size == size and "sha256:" + sha256_file(path) == digest:
        return path
    if client is None:  # the kept manifest's blob went missing: fetch it again
        client = client_for(reference.host)
    if size > limit:
        raise refuse(reference, f"layer {digest} is {size} bytes, more than the {limit} allowed")
    store.mkdir(parents=True, exist_ok=True)
    container = oras.container.Container(str(reference))
    url = f"{client.prefix}://{container.get_blob_url(digest)}"
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name[:12]}.", dir=store)
    try:
        hasher, written = hashlib.sha256(), 0
        with os.fdopen(handle, "wb") as out, _request(client, reference, url, {}) as response:
            _check_status(response, reference, f"layer {digest}")
            for block in response.iter_content(1 << 20):
                written += len(block)
                if written > size:
                    raise refuse(reference, f"layer {digest} is larger than its manifest says")
                hasher.update(block)
                out.write(block)
        if written != size or "sha256:" + hasher.hexdigest() != digest:
            raise refuse(reference, f"layer {digest} does not match its digest: the registry "
                          "holds a corrupt or modified copy")  # fmt: skip
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _keep(store: Path, digest: str, raw: bytes) -> None:
    store.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".manifest.", dir=store)
    with os.fdopen(handle, "wb") as out:
        out.write(raw)
    os.replace(tmp, store / digest.removeprefix("sha256:"))


def _request(
    client: oras.provider.Registry, reference: Reference, url: str, headers: dict[str, str]
) -> requests.Response:
    """GET through oras-py (credentials from the Docker config, token auth); a registry
    that cannot be reached or refuses authentication is one message."""
    client.auth.load_configs(oras.container.Container(str(reference)))
    try:
        return client.do_request(url, "GET", headers=dict(headers), stream=True)
    except requests.RequestException as exc:
        raise unreachable(reference.host, exc) from None
    except (ValueError, oras.auth.AuthenticationException) as exc:  # oras-py's auth failures
        raise RegistryError(
            f"{reference}: the registry {reference.host} refused our credentials ({exc}). Log "
            "in with `docker login` or `oras login` (aierun reads ~/.docker/config.json)."
        ) from None


def unreachable(host: str, exc: Exception) -> RegistryError:
    """The message for a registry that does not answer (down, wrong address, TLS)."""
    reason = type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        advice = f"if it serves plain HTTP, list it in {PLAIN_HTTP_ENV}={host}"
    else:
        advice = "check the address and that the registry is running"
    return RegistryError(f"cannot reach the registry {host} ({reason}): {advice}.")


def _check_status(response: requests.Response, reference: Reference, what: str) -> None:
    if response.status_code in (401, 403):
        raise RegistryError(
            f"{reference}: the registry refuses access to {what} (HTTP {response.status_code}). "
            "Log in with `docker login` or `oras login` (aierun reads ~/.docker/config.json)."
        )
    if response.status_code != 200:
        raise refuse(reference, f"the registry answered HTTP {response.status_code} for {what}")


def refuse(reference: Reference, reason: str, advice: str = PULL_AGAIN) -> RegistryError:
    return RegistryError(f"refusing {reference}: {reason}. Nothing from it is used: {advice}.")


def open_pulled(
    reference: Reference, targets: tuple[str, ...] | None, args: argparse.Namespace
) -> Path:
    """Pull `reference` (unless already here), then check and unpack its bundle as
    `open_local` does a file's: --sha256, and the signature it was published with."""
    pulled = pull(reference)
    return open_bundle(
        pulled.bundle,
        paths.home() / "bundles",
        targets,
        sha256=args.sha256,
        trust=Trust.from_flags(args.trust, args.require_signed),
        signature=pulled.signature,
    )


def cmd_pull(args: argparse.Namespace) -> int:
    """`aierun pull HOST/REPO:TAG|@sha256:...`: fetch, verify and unpack a bundle; print
    the directory to pass as --artifacts (the pinned reference is logged)."""
    from aierun.devices import device_targets

    reference = Reference.parse(args.reference)
    if reference is None:
        raise UserError(
            f"{args.reference!r} is not a registry reference: write HOST[:PORT]/REPOSITORY:TAG "
            "or HOST[:PORT]/REPOSITORY@sha256:DIGEST (e.g. 127.0.0.1:5000/aie/smollm2:emu)."
        )
    print(open_pulled(reference, device_targets(args.device), args))
    return 0
