"""Bundles: `doit pack` output runs elsewhere without aiebuild, and every unsafe or
unusable archive is refused with a message naming what is wrong."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from aiebuild.bundle import pack
from aiebuild.tasks import BuildConfig, compile_all
from aierun import ARTIFACT_SCHEMA, OLDER_SCHEMA, __version__, cli
from aierun.artifacts import ArtifactError, ArtifactSet, find_manifest
from aierun.bundle import BUNDLE_META, SUMS, open_bundle, parse_sums
from aierun.errors import UserError
from aierun.files import sha256_file
from aierun.host.sampling import Sampling

# `import aiebuild` fails in this interpreter, as on a machine with only the runtime.
WITHOUT_AIEBUILD = (
    "import sys; sys.modules['aiebuild'] = None; "
    "from aierun.cli import main; sys.exit(main(sys.argv[1:]))"
)
PROMPT = "What is the capital of France?"
EMU_TARGETS = ("emu", "npu2")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, runtime_home, emu_manifest) -> Path:
    return pack(runtime_home, "emu", tmp_path_factory.mktemp("packed") / "smol-emu.tar.gz")


def read_members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def write_archive(path: Path, files: dict[str, bytes], specials=()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in specials:
            tar.addfile(info)
    return path


def resigned(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files with a SHA256SUMS that matches them, as a forger would write it."""
    body = {name: data for name, data in files.items() if name != SUMS}
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(body.items()))
    return {SUMS: sums.encode(), **body}


def plan_member(files: dict[str, bytes]) -> str:
    return next(name for name in files if name.endswith("/plan.json"))


def test_pack_lists_every_file_and_rewrites_the_store(bundle, emu_manifest):
    files = read_members(bundle)
    listed = parse_sums(files[SUMS].decode(), bundle)
    assert set(listed) == set(files) - {SUMS}
    assert all(hashlib.sha256(files[n]).hexdigest() == d for n, d in listed.items())
    meta = json.loads(files[BUNDLE_META])
    assert (meta["schema"], meta["target"], meta["min_runtime_version"]) == (
        ARTIFACT_SCHEMA, "emu", __version__,
    )  # fmt: skip
    manifest = json.loads(files["manifest.json"])
    built = json.loads(emu_manifest.read_text())
    assert manifest == {**built, "store": "entries"}
    assert {n.split("/")[1] for n in files if n.startswith("entries/")} == set(
        built["elfs"].values()
    )


def test_packing_is_reproducible(tmp_path, bundle, runtime_home, emu_manifest):
    again = pack(runtime_home, "emu", tmp_path / "again.tar.gz")
    assert again.read_bytes() == bundle.read_bytes()


@pytest.mark.slow
def test_bundle_runs_elsewhere_without_aiebuild(tmp_path, bundle, session, model_dir):
    """The bundle copied to another directory, run by a Python that cannot import
    aiebuild, generates what the build directory's artifacts generate."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(bundle, elsewhere / "bundle.tar.gz")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIEBUILD, "run", "--artifacts", "bundle.tar.gz",
         "--n-tokens", "4", "--prompt", PROMPT, "--model", str(model_dir)],
        cwd=elsewhere, env={**os.environ, "AIERUN_HOME": str(tmp_path / "home")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tokens = list(session.generate(PROMPT, 4, Sampling()))
    expected = session.checkpoint.tokenizer.decode(tokens, skip_special_tokens=True)
    assert result.stdout == expected + "\n"
    assert len(list((tmp_path / "home" / "bundles").iterdir())) == 1


def test_unpacked_copy_is_reused_and_repaired(tmp_path, bundle):
    first = open_bundle(bundle, tmp_path, EMU_TARGETS)
    assert open_bundle(bundle, tmp_path, EMU_TARGETS) == first
    victim = first / plan_member(read_members(bundle))
    victim.write_text("{}")
    assert open_bundle(bundle, tmp_path, EMU_TARGETS) == first
    listed = parse_sums((first / SUMS).read_text(), bundle)
    assert all(sha256_file(first / name) == digest for name, digest in listed.items())
    artifacts = ArtifactSet.open(find_manifest(first, EMU_TARGETS, tmp_path / "no-home"))
    assert artifacts.store == first / "entries"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporaries left


def test_aierun_unpack_prints_the_directory(bundle, runtime_home, capsys):
    assert cli.main(["unpack", str(bundle)]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent == runtime_home / "bundles"
    assert (printed / "manifest.json").is_file()


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def flip_a_byte(files):
    name = plan_member(files)
    data = bytearray(files[name])
    data[len(data) // 2] ^= 0x01
    files[name] = bytes(data)
    return files, ()


def edit_meta(**changes) -> Callable:
    def edit(files):
        meta = {**json.loads(files[BUNDLE_META]), **changes}
        files[BUNDLE_META] = json.dumps(meta).encode()
        return resigned(files), ()

    return edit


def add_member(name: str) -> Callable:
    return lambda files: ({**files, name: b"payload"}, ())


def add_special(info: tarfile.TarInfo) -> Callable:
    return lambda files: (files, (info,))


def drop_member(files):
    del files[plan_member(files)]
    return files, ()


def list_outside(files):
    files[SUMS] += f"{'0' * 64}  ../../outside.txt\n".encode()
    return files, ()


def drop_sums(files):
    del files[SUMS]
    return files, ()


REFUSALS = {
    "flipped byte": (flip_a_byte, r"file entries/[0-9a-f]{64}/plan\.json does not match"),
    "path traversal": (add_member("../escape.txt"), r"'\.\./escape\.txt' points outside"),
    "absolute path": (add_member("/tmp/escape.txt"), r"'/tmp/escape\.txt' has an absolute"),
    "300-character name": (add_member("entries/" + "n" * 300), r"longer than 255 bytes"),
    "symlink": (
        add_special(_special("entries/link", tarfile.SYMTYPE, "/etc/passwd")),
        r"'entries/link' is a symbolic link to '/etc/passwd'",
    ),
    "hard link": (
        add_special(_special("entries/hard", tarfile.LNKTYPE, "manifest.json")),
        r"'entries/hard' is a hard link",
    ),
    "device file": (
        add_special(_special("entries/tty", tarfile.CHRTYPE)),
        r"'entries/tty' is a device or special file",
    ),
    "unlisted file": (add_member("notes.txt"), r"'notes\.txt' is not listed in SHA256SUMS"),
    "listed file missing": (drop_member, r"plan\.json is listed in SHA256SUMS but missing"),
    "no sha256 list": (drop_sums, r"has no SHA256SUMS"),
    "list names a path outside": (list_outside, r"lists '\.\./\.\./outside\.txt', which points"),
    "other target": (edit_meta(target="npu9"), r"is for target 'npu9', the device runs emu"),
    "newer schema": (
        edit_meta(schema=ARTIFACT_SCHEMA + 1),
        rf"bundle schema {ARTIFACT_SCHEMA + 1}, this runtime reads up to {ARTIFACT_SCHEMA}",
    ),
    "older schema": (
        edit_meta(schema=ARTIFACT_SCHEMA - 1),
        rf"bundle schema {ARTIFACT_SCHEMA - 1} \({re.escape(OLDER_SCHEMA)}\)",
    ),
    "newer runtime": (edit_meta(min_runtime_version="99.0"), r"needs aierun >= 99\.0"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unsafe_or_unusable_bundle_is_refused(tmp_path, bundle, case):
    edit, message = REFUSALS[case]
    files, specials = edit(read_members(bundle))
    crafted = write_archive(tmp_path / "crafted.tar.gz", files, specials)
    cache_dir = tmp_path / "cache"
    with pytest.raises(ArtifactError, match=message):
        open_bundle(crafted, cache_dir, EMU_TARGETS)
    assert list(cache_dir.iterdir()) == []  # nothing half-unpacked stays behind


def test_damaged_compression_is_refused(tmp_path, bundle):
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="refusing bundle"):
        open_bundle(damaged, tmp_path / "cache", EMU_TARGETS)


def test_pack_refuses_a_corrupt_store_entry(tmp_path, model_dir):
    manifest = compile_all(BuildConfig(tmp_path, str(model_dir), (64,), "emu"))
    key = next(iter(json.loads(manifest.read_text())["elfs"].values()))
    (tmp_path / "cache" / "emu" / key / "plan.json").write_text("{}")
    with pytest.raises(UserError, match=rf"{key}/plan\.json .*run `doit compile`"):
        pack(tmp_path, "emu", tmp_path / "out.tar.gz")
    assert not (tmp_path / "out.tar.gz").exists()
