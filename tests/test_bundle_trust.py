"""Which bundle a user trusts: `doit pack` prints and writes the archive's sha256,
`--sha256` refuses any other archive, and OpenSSH signatures (`doit pack sign=KEY`)
are checked against the user's allowed-signers file, all before a member is read."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_bundle import plan_member, read_members, resigned, write_archive

from aiebuild.bundle import pack, pack_build
from aiebuild.tasks import BuildConfig
from aierun import bundle as runtime_bundle
from aierun import cli
from aierun.files import sha256_file
from aierun.signatures import NAMESPACE, REQUIRE_ENV, TRUSTED_KEYS

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, runtime_home, emu_manifest) -> Path:
    return pack(runtime_home, "emu", tmp_path_factory.mktemp("packed") / "smol-emu.tar.gz")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Two OpenSSH keys and an allowed-signers file that trusts only alice's."""
    where = tmp_path_factory.mktemp("keys")
    for name in ("alice", "mallory"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                        "-f", str(where / name)], check=True)  # fmt: skip
    public = (where / "alice.pub").read_text().strip()
    allowed = where / "allowed_signers"
    allowed.write_text(f'alice@example.org namespaces="{NAMESPACE}" {public}\n')
    return {"alice": where / "alice", "mallory": where / "mallory", "trust": allowed}


@pytest.fixture
def copy(tmp_path, bundle) -> Path:
    """The bundle in a directory of its own (its signature goes beside it)."""
    return Path(shutil.copy(bundle, tmp_path / bundle.name))


def fingerprint(key: Path) -> str:
    listed = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True,
                            text=True, check=True)  # fmt: skip
    return listed.stdout.split()[1]


def unpack(archive: Path, capsys, *flags: str) -> tuple[int, str]:
    """The exit code and what the user sees: the printed directory, or the message."""
    code = cli.main(["unpack", str(archive), *flags])
    captured = capsys.readouterr()
    return code, captured.out.splitlines()[-1] if code == 0 else captured.err


def forged(bundle: Path, where: Path) -> Path:
    """The attack of issue 22: another launch plan, with SHA256SUMS recomputed to match."""
    files = read_members(bundle)
    plan = plan_member(files)
    files[plan] = json.dumps({**json.loads(files[plan]), "forged": True}).encode()
    return write_archive(where / bundle.name, resigned(files))


@pytest.fixture
def no_member_read(monkeypatch):
    """Fail the test if the archive is opened as a tar (a member would be read)."""

    def opened(archive):
        raise AssertionError(f"{archive} was opened before it was refused")

    monkeypatch.setattr(runtime_bundle, "_open_tar", opened)


def test_pack_prints_and_writes_the_digest(runtime_home, model_dir, emu_manifest, capsys):
    out = pack_build(BuildConfig(runtime_home, str(model_dir), (64, 128), "emu"))
    digest = sha256_file(out)
    # the last line: unconfigured log lines go to stdout in tests
    assert capsys.readouterr().out.splitlines()[-1] == f"{digest}  {out}"
    assert (out.parent / f"{out.name}.sha256").read_text() == f"{digest}  {out.name}\n"
    checked = subprocess.run(["sha256sum", "-c", f"{out.name}.sha256"], cwd=out.parent,
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_the_right_sha256_is_accepted(copy, capsys):
    code, out = unpack(copy, capsys, "--sha256", f"sha256:{sha256_file(copy).upper()}")
    assert code == 0 and (Path(out.strip()) / "manifest.json").is_file()


def test_a_forged_consistent_bundle_is_refused_by_sha256(tmp_path, bundle, capsys, no_member_read):
    fake = forged(bundle, tmp_path)
    code, err = unpack(fake, capsys, "--sha256", sha256_file(bundle))
    assert code == 2
    assert f"its sha256 is {sha256_file(fake)}, not the {sha256_file(bundle)}" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_sha256_of_a_directory_is_refused(emu_manifest, model_dir, capsys):
    argv = ["run", "--artifacts", str(emu_manifest.parent), "--sha256", "0" * 64]
    assert cli.main([*argv, "--model", str(model_dir)]) == 2
    assert "--sha256 checks a bundle archive" in capsys.readouterr().err


def test_a_malformed_sha256_is_refused_by_the_flag(copy, capsys):
    with pytest.raises(SystemExit):
        cli.main(["unpack", str(copy), "--sha256", "abc"])
    assert "is not a sha256 (64 hex digits" in capsys.readouterr().err


def test_pack_sign_writes_a_signature_a_trusted_key_accepts(
    runtime_home, model_dir, emu_manifest, keys, capsys
):
    config = BuildConfig(runtime_home, str(model_dir), (64, 128), "emu")
    out = pack_build(config, str(keys["alice"]))
    signature = out.parent / f"{out.name}.sig"
    assert signature.read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    capsys.readouterr()
    code, _ = unpack(out, capsys, "--trust", str(keys["trust"]), "--require-signed")
    assert code == 0
    pack_build(config)  # unsigned again: the old signature does not stay beside it
    assert not signature.exists()


def test_the_signer_is_named(copy, keys):
    from aierun.signatures import Trust, check, sign

    signature = sign(copy, keys["alice"])
    signer = check(copy, signature, Trust(keys["trust"], required=True))
    assert signer == f"alice@example.org (ED25519 key {fingerprint(keys['alice'])})"


def sign_with(key: str):
    def signed(copy: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
        from aierun.signatures import sign

        sign(copy, keys[key])
        return copy

    return signed


def tampered_after_signing(copy: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
    from aierun.signatures import sign

    signature = sign(copy, keys["alice"])
    fake = forged(copy, tmp_path / "forged")
    shutil.copy(signature, fake.parent / signature.name)
    return fake


def unsigned(copy: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
    return copy


def not_a_signature(copy: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
    (copy.parent / f"{copy.name}.sig").write_text("not a signature\n")
    return copy


SIGNATURE_REFUSALS = {
    "unknown key": (sign_with("mallory"), (),
                    r"is by ED25519 key SHA256:\S+, which is not among the trusted keys"),
    "tampered bundle": (tampered_after_signing, (),
                        r"\(by alice@example\.org\) does not match it \(.*incorrect signature"),
    "unsigned, --require-signed": (unsigned, ("--require-signed",),
                                   r"it is unsigned and signatures are required"),
    "not a signature": (not_a_signature, (), r"\.sig is not a valid signature of it"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SIGNATURE_REFUSALS))
def test_a_bad_or_missing_signature_is_refused(case, copy, keys, tmp_path, capsys, no_member_read):
    (tmp_path / "forged").mkdir()
    make, flags, message = SIGNATURE_REFUSALS[case]
    archive = make(copy, keys, tmp_path)
    code, err = unpack(archive, capsys, "--trust", str(keys["trust"]), *flags)
    assert code == 2 and re.search(message, err), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_policy_comes_from_the_environment_and_the_home(
    copy, keys, runtime_home, monkeypatch, capsys
):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    code, err = unpack(copy, capsys)
    assert code == 2 and "it is unsigned and signatures are required" in err
    sign_with("alice")(copy, keys, copy.parent)
    code, err = unpack(copy, capsys)  # signed, but $AIERUN_HOME/trusted_keys is missing
    assert code == 2 and f"{runtime_home / TRUSTED_KEYS} is missing" in err
    shutil.copy(keys["trust"], runtime_home / TRUSTED_KEYS)
    try:
        assert unpack(copy, capsys)[0] == 0
    finally:
        (runtime_home / TRUSTED_KEYS).unlink()
