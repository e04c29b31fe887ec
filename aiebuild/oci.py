"""Pushing to an OCI registry with the ORAS Python SDK (oras-py), for `doit push` (a
bundle, aiebuild/push.py) and the remote cache of compiled entries
(aiebuild/remote_cache.py). Pulls are the runtime's (aierun/registry.py), whose
client (credentials, timeouts, plain HTTP for loopback) this uses too."""

from __future__ import annotations

import requests

from aierun.registry import Reference, RegistryError, client_for, unreachable


def oras_push(
    reference: Reference, files: list[str], config: str, annotations: dict[str, str]
) -> str:
    """Push `files` ("PATH:MEDIA_TYPE" layers) with the `config` blob as one image
    manifest tagged `reference`; returns the manifest's digest. A registry that cannot
    be reached or refuses the upload is one RegistryError."""
    client = client_for(reference.host)
    try:
        response = client.push(
            target=str(reference),
            files=files,
            manifest_config=config,
            manifest_annotations=annotations,
            disable_path_validation=True,  # the files are under build/, not the cwd
            quiet=True,
        )
    except requests.RequestException as exc:
        raise unreachable(reference.host, exc) from None
    except ValueError as exc:  # oras-py: a refused upload or authentication
        raise RegistryError(
            f"the registry {reference.host} refused the push to {reference} ({exc}). "
            "Check the reference and your credentials (`docker login` or `oras login`)."
        ) from None
    digest = response.headers.get("Docker-Content-Digest", "")
    if not digest.startswith("sha256:"):
        raise RegistryError(f"the registry {reference.host} accepted {reference} but gave no "
                            "manifest digest: pull it by tag to learn it.")  # fmt: skip
    return digest
