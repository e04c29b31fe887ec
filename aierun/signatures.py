"""Bundle signatures: OpenSSH signatures (`ssh-keygen -Y sign|verify`, the SSHSIG format
git uses for signed commits), checked against keys the user chose to trust.

The trusted keys are an OpenSSH allowed-signers file (`ssh-keygen(1)`, ALLOWED
SIGNERS): one line per key, `<principal> namespaces="aie-llm-bundle" <public key>`.
It is `--trust FILE`, else `$AIERUN_HOME/trusted_keys`. The policy:

- a signature beside a bundle is checked whenever there are trusted keys, and a bad
  one (tampered bundle, unknown key, not a signature) is refused;
- `--require-signed` or `AIERUN_REQUIRE_SIGNED=1` also refuses an unsigned bundle,
  and a signed one when there is no trusted key to check it with.

All the cryptography is ssh-keygen's: this module only runs it and reads its verdict.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from aierun import paths
from aierun.errors import UserError

log = structlog.get_logger("aierun.signatures")

# The SSHSIG namespace: a signature made for a bundle cannot pass as one for
# anything else (a git commit, a file signed for another purpose), nor the reverse.
NAMESPACE = "aie-llm-bundle"
SIGNATURE_SUFFIX = ".sig"
TRUSTED_KEYS = "trusted_keys"
REQUIRE_ENV = "AIERUN_REQUIRE_SIGNED"
TIMEOUT_S = 60
# ssh-keygen's verdict on stdout: Good "<ns>" signature [for <principal>] with <type> key <fp>
_GOOD = re.compile(r'Good "[^"]*" signature (?:for (?P<principal>.+) )?with (?P<key>\S+ key \S+)')


class SignatureError(UserError):
    """A bundle's signature is missing, bad, or cannot be checked."""


@dataclass(frozen=True)
class Trust:
    """Which keys the user trusts and whether unsigned bundles are refused."""

    allowed_signers: Path
    required: bool = False
    explicit: bool = False  # named with --trust: a missing file is an error, not "no keys"

    @classmethod
    def from_flags(cls, trust: str | None, require_signed: bool) -> Trust:
        """--trust FILE (default $AIERUN_HOME/trusted_keys) and --require-signed or
        AIERUN_REQUIRE_SIGNED=1."""
        required = require_signed or os.environ.get(REQUIRE_ENV, "") not in ("", "0")
        if trust is not None:
            return cls(Path(trust).expanduser(), required, explicit=True)
        return cls(paths.home() / TRUSTED_KEYS, required)


def signature_beside(archive: Path) -> Path:
    """Where `doit pack sign=KEY` puts a bundle's signature: `<bundle>.sig`."""
    return archive.with_name(archive.name + SIGNATURE_SUFFIX)


def sign(archive: Path, private_key: Path) -> Path:
    """Sign `archive` with an OpenSSH private key (or the public half of a key held by
    ssh-agent); returns `<archive>.sig`."""
    if not private_key.is_file():
        raise UserError(f"sign={private_key}: no such key file; pass an OpenSSH private key "
                        "(make one with `ssh-keygen -t ed25519 -f KEY`).")  # fmt: skip
    signature = signature_beside(archive)
    signature.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting it
    result = _ssh_keygen(["-Y", "sign", "-f", str(private_key), "-n", NAMESPACE, str(archive)])
    if result.returncode != 0:
        raise UserError(
            f"sign={private_key}: ssh-keygen could not sign {archive} "
            f"({_reason(result)}); check that it is an OpenSSH private key."
        )
    return signature


def check(archive: Path, signature: Path | None, trust: Trust) -> str | None:
    """Apply the trust policy to `archive` and its `signature` (None: unsigned).
    Returns who signed it ("<principal> (<type> key <fingerprint>)"), or None when it
    was not checked; raises SignatureError when the policy refuses it."""
    where = f"bundle {archive}"
    if signature is None or not signature.is_file():
        if trust.required:
            raise SignatureError(
                f"refusing {where}: it is unsigned and signatures are required "
                f"(--require-signed or {REQUIRE_ENV}=1). Get the bundle with its "
                f"{SIGNATURE_SUFFIX} file from its publisher, or have it packed with "
                "`doit pack sign=KEY`."
            )
        log.info("bundle.unsigned", bundle=str(archive))
        return None
    if not trust.allowed_signers.is_file():
        state = "is not a file" if trust.allowed_signers.exists() else "is missing"
        if trust.required or trust.explicit:
            raise SignatureError(
                f"refusing {where}: no trusted keys to check its signature with "
                f"({trust.allowed_signers} {state}). Add the publisher's key there (one "
                f'line: <name> namespaces="{NAMESPACE}" <public key>) or pass --trust FILE.'
            )
        log.warning("bundle.signature_not_checked", bundle=str(archive),
                    reason=f"no trusted keys at {trust.allowed_signers}")  # fmt: skip
        return None
    signer = _verify(archive, signature, trust.allowed_signers)
    log.info("bundle.signature_good", bundle=str(archive), signer=signer)
    return signer


def _verify(archive: Path, signature: Path, allowed: Path) -> str:
    found = _ssh_keygen(["-Y", "find-principals", "-s", str(signature), "-f", str(allowed)])
    principal = found.stdout.split("\n")[0].strip() if found.returncode == 0 else ""
    if not principal:
        # Not one of ours: say which key it is (or why it is no signature at all).
        key = _signing_key(archive, signature)
        raise SignatureError(
            f"refusing bundle {archive}: its signature {signature} is by {key}, which is not "
            f"among the trusted keys in {allowed}. If you trust that key, add its line there."
        )
    result = _ssh_keygen(
        ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE,
         "-s", str(signature)],
        stdin=archive,
    )  # fmt: skip
    good = _GOOD.search(result.stdout)
    if result.returncode != 0 or good is None:
        raise SignatureError(
            f"refusing bundle {archive}: its signature {signature} (by {principal}) does not "
            f"match it ({_reason(result)}): the bundle or the signature was modified. Get an "
            "intact copy from its publisher."
        )
    return f"{principal} ({good['key']})"


def _signing_key(archive: Path, signature: Path) -> str:
    """The key that made `signature`, checked against nothing: only for messages."""
    result = _ssh_keygen(
        ["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(signature)], stdin=archive
    )
    good = _GOOD.search(result.stdout)
    if result.returncode != 0 or good is None:
        raise SignatureError(
            f"refusing bundle {archive}: {signature} is not a valid signature of it "
            f"({_reason(result)}). Get an intact copy from its publisher."
        )
    return good["key"]


def _ssh_keygen(argv: list[str], stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
    program = shutil.which("ssh-keygen")
    if program is None:
        raise SignatureError(
            "checking bundle signatures needs ssh-keygen (OpenSSH), which is not on PATH: "
            "install it (Debian/Ubuntu: apt-get install openssh-client)."
        )
    source = stdin.open("rb") if stdin is not None else contextlib.nullcontext(subprocess.DEVNULL)
    with source as handle:
        return subprocess.run([program, *argv], stdin=handle, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)  # fmt: skip


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    """ssh-keygen's own last word on stderr (its progress lines come first)."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"
