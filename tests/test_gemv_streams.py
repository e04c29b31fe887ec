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
