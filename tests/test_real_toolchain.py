"""What only the real mlir-aie + Peano toolchain can show (skipped without it): every
kernel object of the default model compiles with Peano, and every ELF links with aiecc.
The stand-ins in tests/standins/ check the orchestration; this checks the tools."""

from __future__ import annotations

import pytest

from aiebuild.npu2 import toolchain
from aiebuild.npu2.target import Npu2Target
from aiebuild.specs import model_specs
from aiebuild.store import Store
from aiebuild.targets import entry_key
from aierun.model import Checkpoint

FOUND = toolchain.discover()

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.slow,
    pytest.mark.skipif(not FOUND.usable, reason=f"no NPU toolchain here: {FOUND.reason}"),
]


def test_real_peano_and_aiecc_build_every_elf_of_the_default_model(model_dir, tmp_path):
    target = Npu2Target(tmp_path, FOUND)
    store = Store(tmp_path, target.name)
    for spec in model_specs(Checkpoint(model_dir).shape, (64,)):
        for obj in target.kernel_objects(spec):
            assert target.build_object(obj).is_file()
        entry = target.build(spec, entry_key(target, spec, target.fingerprint()), store)
        assert (entry / f"{spec.instance}.elf").is_file()
