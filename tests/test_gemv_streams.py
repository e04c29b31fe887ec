"""How a GEMV launch over several weights (decode's Q, K and V) shares its weight
streams: every part gets one, and the longest stream's run is as short as any sharing
could make it (checked against every sharing on small cases)."""

from itertools import product

import pytest

from aiebuild.ops.gemv import part_runs, share_streams


def longest_run(blocks: list[int], shares: tuple[int, ...]) -> int:
    return max(-(-b // s) for b, s in zip(blocks, shares, strict=True))


@pytest.mark.parametrize("blocks", [[128, 32, 32], [36, 12, 12], [5, 1, 1], [7, 7], [3, 40]])
@pytest.mark.parametrize("streams", [3, 4, 9, 15])
def test_the_sharing_makes_the_longest_run_as_short_as_any(blocks, streams):
    shares = share_streams(blocks, streams)
    assert sum(shares) == streams and min(shares) >= 1
    best = min(
        longest_run(blocks, s)
        for s in product(range(1, streams + 1), repeat=len(blocks))
        if sum(s) == streams
    )
    assert longest_run(blocks, tuple(shares)) == best


def test_each_stream_runs_consecutive_blocks_of_one_part_and_all_are_covered():
    blocks = [128, 32, 32]
    streams = part_runs(blocks, 15)
    assert len(streams) == 15
    for part, count in enumerate(blocks):
        covered = [i for j, run in streams if j == part for i in run]
        assert covered == list(range(count))


@pytest.mark.parametrize("k", [576, 2048, 3072, 4096])
@pytest.mark.parametrize("dtype", ["bf16", "q4_0", "q8_0"])
@pytest.mark.parametrize("epilogue", [None, "swiglu"])
@pytest.mark.parametrize("add", [False, True])
def test_prologue_fits_says_what_the_rules_check_finds(k, dtype, epilogue, add):
    """specs.py keeps an RMSNorm (or add) launch where `prologue_fits` says a core has
    no room: the answer must be the rules check's on the launch itself."""
    from aiebuild import placed
    from aiebuild.array.rules import RulesError
    from aiebuild.ops import gemv
    from aierun.abi import ArgSpec, ElfSpec, Launch, Role

    n = 2 * 2048 if epilogue else 2048
    params = gemv.params(1, k, n, epilogue, rmsnorm_eps=1e-5, add_first=add)
    vectors = ["o", "x", "norm"] if add else ["x", "norm"]
    rows, layout = gemv.weight_shape(n, k, dtype), gemv.weight_layout(k, dtype, epilogue)
    args = (
        *(ArgSpec(name, (1, k), "f32", Role.INPUT) for name in vectors),
        ArgSpec("w", rows, dtype, Role.WEIGHT, "w", layout),
        ArgSpec("y", (1, n // 2 if epilogue else n), "bf16", Role.OUTPUT),
        *([ArgSpec("h", (1, k), "f32", Role.OUTPUT)] if add else []),
    )
    outputs = ("y", "h") if add else ("y",)
    launch = Launch("gemv", params, (*vectors, "w"), outputs)
    spec = ElfSpec("g", "decode", 0, args, (launch,))
    try:
        placed.require_legal([spec])
        legal = True
    except RulesError:
        legal = False
    kind = gemv.ADD_RMSNORM if add else gemv.RMSNORM
    assert gemv.prologue_fits(k, dtype, epilogue, kind) == legal
