"""What a user sees for input they can fix: one line on stderr, exit code 2."""

from __future__ import annotations

import re

import pytest

from aierun import cli


@pytest.fixture
def run(model_dir, emu_manifest, capsys):
    def run(*flags: str) -> str:
        argv = ["run", "--model", str(model_dir), "--artifacts", str(emu_manifest.parent)]
        assert cli.main([*argv, *flags]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        return captured.err

    return run


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--seq-len", "96"), r"not a compiled prefill bucket .* buckets=64,96,128"),
        (("--seq-len", "100"), r"not a compiled .* a prefill bucket is a multiple of 32"),
        (
            ("--n-tokens", "100000"),
            r"positions; the context is 256 \(the KV cache .* is 8192\): ask for ",
        ),
        # Longer than the compiled context (256).
        (("--prompt", "word " * 300), r"positions; the context is 256 .*: shorten the prompt"),
        (("--device", "gpu"), r"unknown device 'gpu'"),
        (("--temperature", "-1"), r"--temperature must be >= 0"),
        (("--top-p", "0"), r"--top-p in \(0, 1\]"),
        (("--seed", "-1"), r"--seed must be 0 or more, got -1"),
    ],
)
@pytest.mark.slow
def test_bad_run_flags_are_refused_with_what_to_do(run, flags, message):
    assert re.search(message, run(*flags))


def test_a_count_below_one_is_refused_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--n-tokens", "0"])
    assert exit_info.value.code == 2
    assert "--n-tokens: must be at least 1" in capsys.readouterr().err


def test_missing_model_and_artifacts_are_named(tmp_path, emu_manifest, capsys):
    argv = ["run", "--model", str(tmp_path / "nowhere"), "--artifacts", str(emu_manifest.parent)]
    assert cli.main(argv) == 2
    assert "is neither a checkpoint directory" in capsys.readouterr().err
    assert cli.main(["run", "--artifacts", str(tmp_path)]) == 2
    assert "no compiled artifacts for target emu" in capsys.readouterr().err


def test_a_tiny_temperature_samples_the_best_token_instead_of_nan():
    import numpy as np

    from aierun.host.sampling import Sampling, sample

    logits = np.array([1.0, 3.0, 2.0, 3.0 - 1e-3], np.float32)
    rng = np.random.default_rng(0)
    assert {sample(logits, Sampling(1e-300, 1.0, 0), rng) for _ in range(20)} == {1}


def test_chat_with_stdin_closed_says_so(monkeypatch, capsys):
    import sys

    monkeypatch.setattr(sys, "stdin", None)
    assert cli.main(["chat"]) == 2
    assert "standard input, which is closed" in capsys.readouterr().err


def test_a_bundle_size_limit_that_is_not_a_number_is_named(monkeypatch):
    from aierun import bundle
    from aierun.artifacts import ArtifactError

    for value in ("1G", "abc", "-5"):
        monkeypatch.setenv(bundle.LIMIT_ENV, value)
        with pytest.raises(ArtifactError, match=f"{bundle.LIMIT_ENV}='{value}'"):
            bundle.max_unpacked_bytes()


def test_an_unknown_log_level_is_refused_on_stderr_only(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--log-level", "LOUD", "unpack", "nowhere.tar.gz"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert "argument --log-level: invalid choice: 'LOUD'" in captured.err


@pytest.mark.parametrize("flags", [("--n-tokens", "100000"), ("--prompt", "word " * 300)])
def test_a_run_the_context_cannot_hold_is_refused_before_any_weight_loads(run, monkeypatch, flags):
    from aierun.session import Session

    def loading(self):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(Session, "prepare", loading)
    assert "the context is 256" in run(*flags)
