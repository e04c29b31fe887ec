"""Shared fixtures: one materialized default model and one emu build per test run.

The model is taken from the checkout's build/models when `doit model` already made
it, else materialized once into a temporary runtime home. Emu artifacts are
compiled with the real build code (aiebuild) into that home, with a small bucket
set so the tests stay fast.
"""

from __future__ import annotations

import os
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
