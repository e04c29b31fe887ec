"""Fault injection: every failure a user can cause, run as a user runs it (a separate
`aierun` or `doit` process). Each case asserts the exit code, one message naming the
file or flag, no traceback, nothing half-written, and that the next normal run works.

The model is a tiny random Llama (one layer, E = 64) with the default model's
tokenizer, so that a whole run takes about a second beyond the imports.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import compile_emu
from safetensors.numpy import save_file

from aiebuild.bundle import pack
from aierun import ARTIFACT_SCHEMA, OLDER_SCHEMA, cli, default_model, logs, paths
from aierun.bundle import BUNDLE_META, SUMS

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = (64,)
PROMPT = "Hello"


# -- the tiny model, its artifacts and a bundle ------------------------------------
def tiny_config() -> dict:
    return {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
        "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "eos_token_id": 2, "bos_token_id": 1,
    }  # fmt: skip


def tiny_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    e, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    weights = {"model.embed_tokens.weight": (v, e), "model.norm.weight": (e,)}
    layer = {
        "input_layernorm.weight": (e,), "post_attention_layernorm.weight": (e,),
        "self_attn.q_proj.weight": (e, e), "self_attn.k_proj.weight": (e, e),
        "self_attn.v_proj.weight": (e, e), "self_attn.o_proj.weight": (e, e),
        "mlp.gate_proj.weight": (f, e), "mlp.up_proj.weight": (f, e),
        "mlp.down_proj.weight": (e, f),
    }  # fmt: skip
    weights |= {f"model.layers.0.{name}": shape for name, shape in layer.items()}
    return {
        name: (np.ones(shape) if len(shape) == 1 else rng.normal(0, 0.05, shape)).astype(np.float32)
        for name, shape in weights.items()
    }


def write_tiny_model(path: Path, tokenizer_from: Path, **weight_changes) -> Path:
    path.mkdir(parents=True)
    config = tiny_config()
    (path / "config.json").write_text(json.dumps(config))
    weights = tiny_weights(config)
    for name, value in weight_changes.items():
        weights[name.replace("__", ".")][...] = value
    save_file(weights, str(path / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).is_file():
            (path / name).write_bytes((tokenizer_from / name).read_bytes())
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, model_dir) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", model_dir)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny) -> Path:
    """A build directory with the tiny model's emu artifacts (as `doit compile` makes)."""
    home = tmp_path_factory.mktemp("built")
    compile_emu(home, tiny, BUCKETS)
    return home


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, built) -> Path:
    return pack(built, "emu", tmp_path_factory.mktemp("bundle") / "tiny-emu.tar.gz")


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


# -- running the front doors -----------------------------------------------------
def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIERUN")}
    return {**env, "AIERUN_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def aierun(home: Path, *args: str | bytes, stdin: bytes = b"", cwd: Path = ROOT, **env: str):
    return subprocess.run(
        [sys.executable, "-m", "aierun.cli", *args],
        input=stdin, capture_output=True, cwd=cwd, env=environment(home, **env), timeout=300,
    )  # fmt: skip


def run_args(model: Path, artifacts: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--artifacts", str(artifacts),
            "--prompt", PROMPT, "--n-tokens", "3", *extra]  # fmt: skip


def doit(build: Path, *args: str, home: Path | None = None):
    env = {**environment(home or build), "AIE_BUILD_DIR": str(build)}
    return subprocess.run(
        [sys.executable, "-m", "doit", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def refused(result, code: int, pattern: str) -> str:
    """The failure as users must see it: the exit code, no traceback, one message
    (after any argparse usage line) that matches `pattern`; returns it."""
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    assert result.returncode == code, err
    assert "Traceback" not in err, err
    messages = [line for line in err.splitlines() if re.match(r"aierun \w+:|ERROR:", line)]
    assert len(messages) == 1, err
    assert re.search(pattern, messages[0]), messages[0]
    print(f"exit {code}: {messages[0]}")  # `pytest -rP` lists the table of cases
    return messages[0]


def works(result) -> str:
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    assert result.returncode == 0, err
    assert "Traceback" not in err, err
    out = result.stdout.decode() if isinstance(result.stdout, bytes) else result.stdout
    return out


def half_written(root: Path) -> list[Path]:
    """Temporaries and staging directories (dot names) other than locks and doit's db."""
    if not root.exists():
        return []
    return [
        p for p in root.rglob(".*")
        if not p.name.endswith(".lock") and not p.name.startswith(".doit")
    ]  # fmt: skip


def the_next_run_works(model: Path, artifacts: Path, home: Path) -> None:
    """A normal run with the same home succeeds (in this process: the separate-process
    behaviour is what the failing half of each case checks)."""
    out = io.StringIO()
    with mock.patch.dict(os.environ, {"AIERUN_HOME": str(home)}), redirect_stdout(out):
        assert cli.main(run_args(model, artifacts)) == 0
    assert out.getvalue().endswith("\n")  # the answer (a random model's: any text)
    assert half_written(home) == []


# -- hostile bundles -------------------------------------------------------------
def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def forge(path: Path, files: dict[str, bytes], meta_changes: dict | None = None) -> Path:
    """An archive of `files` with bundle.json edited and SHA256SUMS made to match, as a
    forger would; bundle.json's sizes are kept as they were unless edited."""
    files = dict(files)
    if meta_changes is not None:
        meta = {**json.loads(files[BUNDLE_META]), **meta_changes}
        files[BUNDLE_META] = json.dumps(meta).encode()
    body = {name: data for name, data in files.items() if name != SUMS}
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(body.items()))
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {SUMS: sums.encode(), **body}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


BIG = 64 * 2**20  # zeros: 64 MiB unpacked from about 64 KiB of gzip


def with_big_member(files: dict[str, bytes], declared: int) -> tuple[dict[str, bytes], dict]:
    files = {**files, "entries/big.bin": bytes(BIG)}
    sizes = {**json.loads(files[BUNDLE_META])["sizes"], "entries/big.bin": declared}
    return files, {"sizes": sizes}


@pytest.mark.slow
def test_bundle_member_bigger_than_declared_is_refused_before_writing(tmp_path, bundle, home):
    files, meta = with_big_member(members(bundle), declared=10)
    bomb = forge(tmp_path / "bomb.tar.gz", files, meta)
    refused(aierun(home, "unpack", str(bomb)), 2, r"'entries/big\.bin' holds 67108864 bytes, "
            r"but bundle\.json declares 10")  # fmt: skip
    assert not any((home / "bundles").rglob("*"))  # nothing was written
    assert works(aierun(home, "unpack", str(bundle))).strip()


def test_bundle_declaring_more_than_the_limit_is_refused(tmp_path, bundle, home):
    files, meta = with_big_member(members(bundle), declared=BIG)
    bomb = forge(tmp_path / "bomb.tar.gz", files, meta)
    result = aierun(home, "unpack", str(bomb), AIERUN_MAX_BUNDLE_BYTES=str(2**20))
    refused(result, 2, r"unpack to \d+ bytes, more than the limit of 1048576 "
            r"\(AIERUN_MAX_BUNDLE_BYTES")  # fmt: skip
    assert not any((home / "bundles").rglob("*"))


def test_newer_schema_bundle_is_refused_before_its_bulk_is_read(tmp_path, bundle, home):
    files, meta = with_big_member(members(bundle), declared=BIG)
    bomb = forge(tmp_path / "bomb.tar.gz", files, {**meta, "schema": 99})
    refused(aierun(home, "unpack", str(bomb)), 2, r"bundle schema 99, this runtime reads up")
    assert not any((home / "bundles").rglob("*"))


def test_manifest_key_that_is_not_a_content_key_is_refused(tmp_path, bundle, home):
    files = members(bundle)
    manifest = json.loads(files["manifest.json"])
    first = next(iter(manifest["elfs"]))
    manifest["elfs"][first] = "../../../../outside"
    files["manifest.json"] = json.dumps(manifest).encode()
    sizes = {
        **json.loads(files[BUNDLE_META])["sizes"],
        "manifest.json": len(files["manifest.json"]),
    }
    forged = forge(tmp_path / "keys.tar.gz", files, {"sizes": sizes})
    refused(aierun(home, "unpack", str(forged)), 2, r"names '\.\./\.\./\.\./\.\./outside' for "
            r".*, which is not a content key")  # fmt: skip
    assert not (tmp_path / "outside").exists()


def test_bundle_without_declared_sizes_is_refused(tmp_path, bundle, home):
    forged = forge(tmp_path / "old.tar.gz", members(bundle), {"sizes": None})
    refused(aierun(home, "unpack", str(forged)), 2, r"declares no file sizes")


def test_bundle_that_is_not_an_archive_is_refused(tmp_path, home, tiny, bundle):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all" * 100)
    refused(aierun(home, "run", "--model", str(tiny), "--artifacts", str(junk)), 2,
            r"refusing bundle .*junk\.tar\.gz: it is damaged or not a tar archive")  # fmt: skip
    the_next_run_works(tiny, bundle, home)


# -- manifests and the store -----------------------------------------------------
@pytest.fixture
def build_copy(tmp_path, built) -> Path:
    """A private copy of the built home, safe to damage."""
    copy = tmp_path / "build"
    subprocess.run(["cp", "-a", str(built), str(copy)], check=True)
    return copy


def emu_manifest(build: Path) -> Path:
    return build / "targets" / "emu" / "manifest.json"


def test_torn_manifest_is_named_with_what_to_do(build_copy, tiny, home):
    emu_manifest(build_copy).write_text('{"schema": 1, "targ')
    refused(aierun(home, *run_args(tiny, build_copy)), 2,
            r"manifest .*manifest\.json is not valid JSON .*run `doit compile` again")  # fmt: skip
    compile_emu(build_copy, tiny, BUCKETS)  # what the message says to do
    the_next_run_works(tiny, build_copy, home)


def test_artifacts_of_an_older_schema_are_refused_with_what_to_do(build_copy, tiny, home):
    """An older schema's plans lack what this runtime reads (each launch's work; before
    that, the KV cache the prefill ELFs write): it says to rebuild rather than fail
    inside the first run."""
    data = json.loads(emu_manifest(build_copy).read_text())
    emu_manifest(build_copy).write_text(json.dumps({**data, "schema": ARTIFACT_SCHEMA - 1}))
    why = rf"schema {ARTIFACT_SCHEMA - 1} \({re.escape(OLDER_SCHEMA)}\).*`doit compile`"
    refused(aierun(home, *run_args(tiny, build_copy)), 2, why)
    compile_emu(build_copy, tiny, BUCKETS)
    the_next_run_works(tiny, build_copy, home)


@pytest.mark.slow
def test_manifest_naming_a_non_key_is_refused(build_copy, tiny, home):
    data = json.loads(emu_manifest(build_copy).read_text())
    data["elfs"][next(iter(data["elfs"]))] = "../../../etc"
    emu_manifest(build_copy).write_text(json.dumps(data))
    refused(aierun(home, *run_args(tiny, build_copy)), 2, r"'\.\./\.\./\.\./etc'.* not a content")
    compile_emu(build_copy, tiny, BUCKETS)
    the_next_run_works(tiny, build_copy, home)


def _an_entry(build: Path) -> Path:
    key = next(iter(json.loads(emu_manifest(build).read_text())["elfs"].values()))
    return build / "cache" / "emu" / key


@pytest.mark.slow
def test_missing_store_entry_says_run_doit_compile(build_copy, tiny, home):
    subprocess.run(["rm", "-rf", str(_an_entry(build_copy))], check=True)
    refused(aierun(home, *run_args(tiny, build_copy)), 2, r"is missing .*run `doit compile`")
    compile_emu(build_copy, tiny, BUCKETS)
    the_next_run_works(tiny, build_copy, home)


@pytest.mark.slow
def test_corrupt_store_entry_says_run_doit_compile(build_copy, tiny, home):
    plan = _an_entry(build_copy) / "plan.json"
    plan.write_text(plan.read_text().replace('"', "'", 1))
    refused(aierun(home, *run_args(tiny, build_copy)), 2,
            r"plan\.json does not match its sha256: run `doit compile`")  # fmt: skip
    compile_emu(build_copy, tiny, BUCKETS)
    the_next_run_works(tiny, build_copy, home)


@pytest.mark.slow
def test_torn_artifact_record_says_run_doit_compile(build_copy, tiny, home):
    (_an_entry(build_copy) / "artifact.json").write_text("{")
    refused(aierun(home, *run_args(tiny, build_copy)), 2,
            r"artifact record .*artifact\.json is not valid JSON")  # fmt: skip


def test_doit_compile_rewrites_a_torn_manifest_and_removes_stale_temporaries(build_copy, tiny):
    manifest = emu_manifest(build_copy)
    manifest.write_text("{not json")
    stale = manifest.parent / ".manifest.json.k1ll3d"
    stale.write_text('{"half": ')
    os.utime(stale, (time.time() - 3600,) * 2)
    works(doit(build_copy, "compile", "target=emu", "buckets=64", f"model={tiny}"))
    assert json.loads(manifest.read_text())["buckets"] == [64]
    assert not stale.exists()
    assert half_written(build_copy / "targets") == []


# -- homes that cannot be used ---------------------------------------------------
def test_runtime_home_that_is_a_file(tmp_path, tiny, built):
    home = tmp_path / "home-file"
    home.write_text("not a directory")
    refused(aierun(home, *run_args(tiny, built)), 2,
            r"AIERUN_HOME=.*home-file is a file, not a directory")  # fmt: skip
    home.unlink()
    the_next_run_works(tiny, built, home)


@contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `where` (size-limited or read-only); skips when mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_read_only_home_still_runs_and_refuses_to_unpack(tmp_path, tiny, built, bundle):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as home:
        result = aierun(home, *run_args(tiny, built))
        assert works(result).endswith("\n")  # the log file is a record, not the work
        assert "cannot write the log file" in result.stderr.decode()
        refused(aierun(home, "unpack", str(bundle)), 2,
                r"cannot use .*: Read-only file system; make it writable")  # fmt: skip
    the_next_run_works(tiny, built, tmp_path / "home")


def test_read_only_build_directory_fails_the_compile_cleanly(tmp_path, tiny):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as build:
        result = doit(build, "compile", "target=emu", "buckets=64", f"model={tiny}",
                      home=tmp_path / "home")  # fmt: skip
        refused(result, 3, r"ERROR: build directory: cannot use .*ro: Read-only file system")
    works(doit(tmp_path / "build", "compile", "target=emu", "buckets=64", f"model={tiny}"))


def test_full_disk_while_unpacking(tmp_path, bundle, tiny):
    with mounted_tmpfs(tmp_path / "full", "size=64k") as home:
        (home / "filler").write_bytes(bytes(60 * 1024))  # what is left is less than it needs
        refused(aierun(home, "unpack", str(bundle)), 2, r"has \d+ free.*free some space")
        assert half_written(home) == []
    the_next_run_works(tiny, bundle, tmp_path / "home")


def converted_copy(home: Path, model_dir: Path) -> Path:
    """A marked default-model directory in `home`: a copy of the real one."""
    copy = home / "models" / default_model.NAME
    shutil.copytree(model_dir, copy)  # copy2 keeps the GGUF's time: the index stays valid
    (copy / default_model.MARKER).write_text(json.dumps(default_model._marker()))
    return copy


def test_full_disk_while_materializing_the_default_model(tmp_path, model_dir, built):
    """Sharing a converted copy into a full home: ENOSPC named, no staging left."""
    source = converted_copy(tmp_path / "first", model_dir)
    script = (
        "import sys; from pathlib import Path; from aierun import paths;"
        f"paths.model_homes = lambda: [Path({str(source.parents[1])!r})];"
        "from aierun.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    with mounted_tmpfs(tmp_path / "full", "size=2m") as home:
        result = subprocess.run(
            [sys.executable, "-c", script, "run", "--artifacts", str(built)],
            capture_output=True, env=environment(home), timeout=300,
        )  # fmt: skip
        refused(result, 2, r"cannot use .*full/models: No space left on device; free")
        assert half_written(home / "models") == []


@pytest.mark.slow
def test_full_disk_while_compiling(tmp_path, tiny):
    """The time model builds the kernels it counts while doit makes its task list: a
    full build directory is one line naming it, not a traceback."""
    with mounted_tmpfs(tmp_path / "full", "size=200k") as build:
        result = doit(build, "compile", f"model={tiny}", "target=emu", "buckets=64")
    err = result.stderr
    assert result.returncode != 0 and "Traceback" not in err, err
    assert re.search(rf"cannot use {build}/\S+: No space left on device; free some", err), err


def fill(directory: Path) -> None:
    """Write a file until the file system is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_is_not_called_a_corrupted_dependency_file(tmp_path):
    """doit's sqlite3 backend calls a full disk a corrupted file and says to delete it."""
    from doit.dependency import JSONCodec
    from doit.exceptions import InvalidCommand

    from aiebuild.doit_db import DependencyFile

    with mounted_tmpfs(tmp_path / "full", "size=64k") as build:
        db = DependencyFile(str(build / ".doit.db"), JSONCodec())
        fill(build)
        db.set("compile:x", "result", "y" * 100_000)
        with pytest.raises(InvalidCommand, match=r"doit's record of what is built: .*free some"):
            db.dump()


# -- damaged checkpoints ---------------------------------------------------------
def damaged_copy(tiny: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    subprocess.run(["cp", "-a", str(tiny), str(copy)], check=True)
    return copy


def _rewrite_header(file: Path, edit) -> None:
    data = file.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])


def _truncate(model: Path) -> None:
    file = model / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _past_the_end(model: Path) -> None:
    def edit(header):
        name = "model.norm.weight"
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin + 10**9, end + 10**9]

    _rewrite_header(model / "model.safetensors", edit)


def _huge_header_length(model: Path) -> None:
    file = model / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes((2**40).to_bytes(8, "little") + data[8:])


def _bad_config(model: Path) -> None:
    (model / "config.json").write_text('{"model_type": "llama", ')


def _config_missing_a_key(model: Path) -> None:
    config = tiny_config()
    del config["hidden_size"]
    (model / "config.json").write_text(json.dumps(config))


def _no_tokenizer(model: Path) -> None:
    (model / "tokenizer.json").unlink()


def _broken_tokenizer(model: Path) -> None:
    (model / "tokenizer.json").write_text("{]")


CHECKPOINT_FAULTS = {
    "truncated safetensors": (
        _truncate,
        r"model\.safetensors: tensor .* lies at bytes .*truncated",
    ),
    "tensor past the end": (_past_the_end, r"model\.safetensors: tensor model\.norm\.weight lies"),
    "header length 2^40": (_huge_header_length, r"header length \(1099511627776 bytes\) does not"),
    "invalid config.json": (_bad_config, r"config\.json is not valid JSON"),
    "config.json without hidden_size": (_config_missing_a_key, r"config\.json lacks .*hidden_size"),
    "missing tokenizer.json": (_no_tokenizer, r"has no tokenizer \(tokenizer\.json or"),
    "broken tokenizer.json": (_broken_tokenizer, r"tokenizer in .* cannot be loaded"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_FAULTS))
@pytest.mark.slow
def test_damaged_checkpoint_is_named(case, tmp_path, tiny, built, home):
    damage, message = CHECKPOINT_FAULTS[case]
    model = damaged_copy(tiny, tmp_path)
    damage(model)
    refused(aierun(home, *run_args(model, built)), 2, message)
    the_next_run_works(tiny, built, home)


@pytest.mark.slow
def test_checkpoint_with_nan_weights_is_refused(tmp_path, model_dir, built, tiny, home):
    model = write_tiny_model(tmp_path / "nan", model_dir, model__norm__weight=np.nan)
    refused(aierun(home, *run_args(model, built)), 2,
            r"NaN/infinite logits: tensor 'model\.norm\.weight' in .*nan holds NaN")  # fmt: skip
    the_next_run_works(tiny, built, home)


# -- signals, pipes, encodings, flags ----------------------------------------------
def _sigint_default() -> None:
    """A program started from a background job inherits SIGINT ignored (POSIX), and
    Python then keeps ignoring it: the child gets the default a terminal gives, so the
    test's SIGINT stands for a Ctrl-C wherever the tests run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signalled_run(args: list[str], home, signum: int) -> tuple[subprocess.CompletedProcess, bytes]:
    """`aierun` sent `signum` once its answer has started; the result, its first bytes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "aierun.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=environment(home),
        preexec_fn=_sigint_default,
    )  # fmt: skip
    first = process.stdout.read(8)  # generation has started
    process.send_signal(signum)
    rest, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, first + rest, err), first


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [(signal.SIGINT, 130, r"aierun run: interrupted \(Ctrl-C\)"),
     (signal.SIGTERM, 143, r"aierun run: stopped by SIGTERM"),
     (signal.SIGHUP, 129, r"aierun run: stopped by SIGHUP")],
)  # fmt: skip
def test_a_signal_during_generation_keeps_the_text_ends_the_line_and_says_why(
    tiny, built, home, signum, code, message, model_dir, emu_manifest
):
    # The default model's long answer: the tiny model decodes ~1700 tokens/s, so its
    # whole answer could be out before the signal lands; this one takes tens of seconds.
    args = ["run", "--model", str(model_dir), "--artifacts", str(emu_manifest.parent),
            "--prompt", "Tell me a long story about a dragon.", "--n-tokens", "200"]  # fmt: skip
    result, first = signalled_run(args, home, signum)
    refused(result, code, message)
    assert len(first) == 8  # the answer had started, and its text stays on stdout
    assert result.stdout.endswith(b"\n")  # the line is ended
    the_next_run_works(tiny, built, home)


@pytest.mark.slow
def test_closed_pipe_is_quiet(tiny, built, home):
    command = [sys.executable, "-m", "aierun.cli", *run_args(tiny, built)[:-2], "--n-tokens", "64"]
    shell = f"{' '.join(map(repr, command))} | head -c 1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, env=environment(home),
                            cwd=ROOT, timeout=300)  # fmt: skip
    assert result.returncode in (0, 141), result.stderr
    assert b"BrokenPipe" not in result.stderr and b"Traceback" not in result.stderr
    the_next_run_works(tiny, built, home)


def test_prompt_that_is_not_utf8(tiny, built, home):
    args = run_args(tiny, built)
    args[args.index(PROMPT)] = b"caf\xe9"  # Latin-1, as a terminal in another locale sends it
    refused(aierun(home, *args), 2, r"argument --prompt: is not UTF-8 text")
    the_next_run_works(tiny, built, home)


def test_prompts_file_that_is_not_utf8(tmp_path, tiny, built, home):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"caf\xe9 au lait?\n")
    result = aierun(home, "verify", "--model", str(tiny), "--artifacts", str(built),
                    "--prompts", str(prompts))  # fmt: skip
    refused(result, 2, r"--prompts .*prompts\.txt is not UTF-8 text")


@pytest.mark.slow
def test_chat_input_that_is_not_utf8(tiny, built, home):
    result = aierun(home, "chat", "--model", str(tiny), "--artifacts", str(built),
                    stdin=b"caf\xe9\n", PYTHONIOENCODING="utf-8:strict")  # fmt: skip
    refused(result, 2, r"the chat input \(stdin\) is not UTF-8")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--temperature", "nan", r"argument --temperature: must be a finite number, got nan"),
        ("--top-p", "inf", r"argument --top-p: must be a finite number, got inf"),
        ("--n-tokens", "many", r"argument --n-tokens: invalid positive_int value: 'many'"),
    ],
)
def test_flag_values_that_are_not_numbers(flag, value, message, tiny, built, home):
    refused(aierun(home, *run_args(tiny, built), flag, value), 2, message)


def test_npu_without_an_npu_says_what_was_looked_for(tiny, built, home):
    refused(aierun(home, *run_args(tiny, built), "--device", "npu"), 2,
            r"no NPU found here: looked for XRT's Python bindings \(pyxrt\).*/dev/accel.*"
            r"--device emu")  # fmt: skip


def test_misspelled_doit_option_lists_the_valid_ones(tmp_path, tiny):
    result = doit(tmp_path / "build", "generate", "--promt", "Hi")
    message = refused(result, 3, r"task generate: option --promt not recognized")
    assert "Did you mean --prompt?" in message and "--n-tokens" in message
    assert "CmdOption" not in result.stderr


# -- two at once -----------------------------------------------------------------
def test_two_compiles_at_once(tmp_path, tiny):
    build = tmp_path / "build"
    env = {**environment(build), "AIE_BUILD_DIR": str(build)}
    command = [sys.executable, "-m", "doit", "compile", "target=emu", "buckets=64",
               f"model={tiny}"]  # fmt: skip
    processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0 and b"Traceback" not in err, err.decode()
    assert half_written(build / "cache") == [] and half_written(build / "targets") == []
    the_next_run_works(tiny, build, tmp_path / "home")


@pytest.mark.slow
def test_two_runs_at_once(tiny, built, home):
    command = [sys.executable, "-m", "aierun.cli", *run_args(tiny, built)]
    processes = [subprocess.Popen(command, cwd=ROOT, env=environment(home),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]  # fmt: skip
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and b"Traceback" not in err, err.decode()
        outputs.append(out)
    assert outputs[0] == outputs[1] and outputs[0].endswith(b"\n")  # greedy: the same


# -- the front door --------------------------------------------------------------
@pytest.mark.slow
def test_chat_keeps_logs_off_the_console_and_says_when_an_answer_was_cut(tiny, built, home):
    result = aierun(home, "chat", "--model", str(tiny), "--artifacts", str(built),
                    "--n-tokens", "2", stdin=b"Hi\n\n")  # fmt: skip
    out = works(result)
    assert "[info" not in result.stderr.decode()  # the log file has them
    assert "the answer was cut at 2 tokens (--n-tokens) and is not kept" in result.stderr.decode()
    assert out.endswith("\n")  # the (random model's) answer, streamed


@pytest.mark.slow
def test_aierun_inside_a_checkout_finds_its_build(tmp_path, tiny, built):
    checkout = tmp_path / "checkout"
    for marker in paths.CHECKOUT_MARKERS:
        (checkout / marker).mkdir(parents=True) if marker != "dodo.py" else None
    (checkout / "dodo.py").write_text("")
    subprocess.run(["cp", "-a", str(built), str(checkout / "build")], check=True)
    env = {k: v for k, v in environment(tmp_path).items() if k != "AIERUN_HOME"}
    env["HOME"] = str(tmp_path / "user")  # no ~/.cache/aierun to fall back on
    result = subprocess.run(
        [sys.executable, "-m", "aierun.cli", "run", "--model", str(tiny), "--n-tokens", "2"],
        cwd=checkout / "aierun", env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert works(result).endswith("\n")


def test_a_new_home_shares_the_converted_default_model(tmp_path, monkeypatch, model_dir):
    copy = converted_copy(tmp_path / "first", model_dir)
    monkeypatch.setattr(paths, "model_homes", lambda: [tmp_path / "first"])

    def no_conversion(*_):
        raise AssertionError("converted again although a copy exists")

    monkeypatch.setattr(default_model, "_convert", no_conversion)
    target = default_model.materialize(tmp_path / "second" / "models" / default_model.NAME)
    for name in default_model.CHECKPOINT_FILES:
        assert (target / name).stat().st_ino == (copy / name).stat().st_ino  # linked, not copied
    assert half_written(tmp_path / "second") == []


@pytest.mark.slow
def test_build_choices_are_remembered_and_models_kept_side_by_side(tmp_path, tiny, model_dir):
    build = tmp_path / "build"
    other = write_tiny_model(tmp_path / "other", model_dir)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "intermediate_size": 192}))
    save_file(tiny_weights({**config, "intermediate_size": 192}), str(other / "model.safetensors"))
    works(doit(build, "compile", "target=emu", "buckets=64", f"model={other}"))
    works(doit(build, "compile", f"model={tiny}"))
    assert json.loads((build / "config.json").read_text()) == {
        "buckets": "64", "model": str(tiny), "target": "emu",
    }  # fmt: skip
    works(doit(build, "compile"))  # a plain doit keeps the choices
    assert json.loads(emu_manifest(build).read_text())["buckets"] == [64]
    # Only a compile remembers: checking other buckets is for that run alone.
    works(doit(build, "check", "buckets=256"))
    assert json.loads((build / "config.json").read_text())["buckets"] == "64"
    # The other model still runs from the same build, without compiling again.
    home = tmp_path / "home"
    assert works(aierun(home, *run_args(other, build))).endswith("\n")


def test_rates_measured_under_load_are_measured_again_and_the_best_kept(tmp_path, monkeypatch):
    from aierun.profiling import roofline

    cache = tmp_path / "rates.json"
    busy = roofline.Rates("emu", 1e9, 2e9, "measured while busy")
    monkeypatch.setattr(roofline, "measure_host_rates", lambda: busy)
    monkeypatch.setattr(roofline, "_load_per_cpu", lambda: 3.0)
    assert roofline.device_rates("emu", cache) == busy
    # The machine is idle now: the cached rates are suspect and measured again; a
    # slower measurement than before (noise) never lowers what was seen.
    idle = roofline.Rates("emu", 4e9, 1e9, "measured while idle")
    monkeypatch.setattr(roofline, "measure_host_rates", lambda: idle)
    monkeypatch.setattr(roofline, "_load_per_cpu", lambda: 0.1)
    best = roofline.device_rates("emu", cache)
    assert (best.flops_per_s, best.bytes_per_s) == (4e9, 2e9)
    # Measured at the lowest load seen, they are kept from now on.
    monkeypatch.setattr(roofline, "measure_host_rates", lambda: pytest.fail("measured again"))
    assert roofline.device_rates("emu", cache) == best


def test_a_long_prefill_shows_progress_and_a_short_one_does_not(capsys):
    from aierun import logs

    short = range(3)
    assert logs.progress(short, "prefill layers", 64) is short  # pipelines stay quiet
    assert list(logs.progress(range(3), "prefill layers", logs.LONG_PREFILL)) == [0, 1, 2]
    assert f"prefill layers ({logs.LONG_PREFILL} positions)" in capsys.readouterr().err


def test_log_files_are_private_and_rotated(tmp_path):
    """Logs hold prompts and answers: owner-only files in an owner-only folder, the
    oldest removed once there are more than logs.KEEP_LOG_FILES, and no token ids."""
    import stat

    folder = tmp_path / "logs"
    for number in range(logs.KEEP_LOG_FILES + 3):
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / f"old-{number:03d}.jsonl").write_text("{}\n")
    path = logs.configure(folder, "warning")
    assert path is not None and path.parent == folder
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert len(list(folder.glob("*.jsonl"))) == logs.KEEP_LOG_FILES
    assert not (folder / "old-000.jsonl").exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_an_output_path_that_is_not_a_regular_file_is_refused_not_replaced(tmp_path, kind):
    import os

    from aierun.errors import UserError
    from aierun.files import write_atomic

    target, victim = tmp_path / "out.json", tmp_path / "precious.txt"
    victim.write_text("keep me")
    if kind == "symlink":
        target.symlink_to(victim)
    else:
        os.mkfifo(target)
    with pytest.raises(UserError, match="is not a regular file: refusing to replace it"):
        write_atomic(target, "{}")
    assert victim.read_text() == "keep me"
    assert target.is_symlink() if kind == "symlink" else not target.is_file()
    write_atomic(tmp_path / "new.json", "{}")  # a regular or new file is written as before


def test_a_lock_another_process_holds_is_announced_and_given_up_on(tmp_path, capsys):
    from filelock import FileLock

    from aierun.errors import UserError
    from aierun.files import holding

    lock_file = tmp_path / ".lock"
    other = FileLock(lock_file, thread_local=False)
    other.acquire()  # as another process would hold it
    try:
        refused = pytest.raises(UserError, match=r"gave up after 1 s waiting for the store")
        with refused, holding(lock_file, "the store", wait_s=1.0):
            pass
        assert f"waiting for the store: another process holds {lock_file}" in (
            capsys.readouterr().err
        )
    finally:
        other.release()
    with holding(lock_file, "the store"):  # free again: taken at once, nothing said
        pass
    assert capsys.readouterr().err == ""


def test_the_staging_left_by_a_killed_process_is_removed_by_the_next(tmp_path):
    """kill -9 during an unpack or a conversion leaves its staging directory: the next
    publish of the same thing removes it (its process is gone); a live one stays."""
    import os

    from aierun.files import publish_dir, staging_dir

    final = tmp_path / "0123456789abcdef"
    dead = tmp_path / ".0123456789ab.999999999.x1y2"  # no such process
    live = tmp_path / f".0123456789ab.{os.getppid()}.z3"  # a process that is running
    for leftover in (dead, live):
        leftover.mkdir()
        (leftover / "half-written").write_bytes(b"\0" * 1024)
    with staging_dir(final) as staging:
        (staging / "done").write_text("ok")
        publish_dir(staging, final, lambda path: (path / "done").is_file())
    assert not dead.exists() and live.is_dir() and (final / "done").is_file()


def test_a_chat_template_that_raises_and_a_broken_generation_config_are_named(tmp_path, model_dir):
    import shutil

    from aierun.errors import UserError
    from aierun.model import Checkpoint

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    # transformers reads the template from chat_template.jinja when the file is there
    (copy / "chat_template.jinja").write_text("{{ raise_exception('no system prompts') }}")
    (copy / "generation_config.json").write_text("{not json")
    checkpoint = Checkpoint(copy)
    with pytest.raises(UserError, match=r"chat template of .* fails on this conversation"):
        checkpoint.encode_prompt("hi")
    with pytest.raises(UserError, match=r"generation_config.json is not valid JSON"):
        checkpoint.stop_token_ids()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_an_answer_to_a_full_disk_names_standard_output(tiny, built, home):
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "aierun.cli", *run_args(tiny, built)],
            stdout=full, stderr=subprocess.PIPE, cwd=ROOT, env=environment(home), timeout=300,
        )  # fmt: skip
    message = refused(result, 2, r"aierun run: cannot use standard output: No space left")
    assert "AIERUN_HOME" not in message  # the home is not what is full
    the_next_run_works(tiny, built, home)
