"""Rank arithmetic of hpclm.comm.layout against hand-written rank lists."""
import pytest

from hpclm.comm.layout import Layout, offsets, ring_neighbours, split_counts
from hpclm.errors import UserError

# dp=2, tp=2, pp=2 on 8 ranks: rank = pp*4 + dp*2 + tp
L222 = Layout(8, dp=2, tp=2, pp=2)


def test_coords_follow_megatron_order():
    assert [L222.coords(r) for r in range(8)] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    assert all(L222.rank_of(*L222.coords(r)) == r for r in range(8))


def test_groups_against_expected_lists():
    assert L222.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert L222.groups("dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert L222.groups("pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_dp4_tp3_pp1_and_pure_dp():
    lay = Layout(12, dp=4, tp=3, pp=1)
    assert lay.group("tp", 7) == [6, 7, 8]
    assert lay.group("dp", 7) == [1, 4, 7, 10]
    assert lay.group("pp", 7) == [7]
    assert Layout(5, dp=5).groups("dp") == [[0, 1, 2, 3, 4]]


def test_split_args_make_the_group():
    for kind in ("dp", "tp", "pp"):
        for rank in range(8):
            color, key = L222.split_args(kind, rank)
            members = sorted((L222.split_args(kind, r)[1], r) for r in range(8) if L222.split_args(kind, r)[0] == color)
            assert [r for _, r in members] == L222.group(kind, rank)
            assert members[key][1] == rank


def test_pipeline_and_ring_neighbours():
    lay = Layout(8, dp=2, tp=1, pp=4)       # pipeline of dp index 0: ranks 0, 2, 4, 6
    assert lay.group("pp", 4) == [0, 2, 4, 6]
    assert lay.pipeline_neighbours(0) == (None, 2)
    assert lay.pipeline_neighbours(4) == (2, 6)
    assert lay.pipeline_neighbours(7) == (5, None)
    assert lay.ring_neighbours("pp", 0) == (6, 2)
    assert ring_neighbours([3], 3) == (3, 3)


def test_wrong_world_size_is_a_clear_user_error():
    with pytest.raises(UserError, match=r"world size 6 != dp\*tp\*pp = 2\*2\*2 = 8"):
        Layout(6, dp=2, tp=2, pp=2)
    with pytest.raises(UserError, match="positive integer"):
        Layout(4, dp=0, tp=4)
    with pytest.raises(UserError, match="unknown group kind"):
        L222.group("ep", 0)
    with pytest.raises(UserError, match="outside a world of 8"):
        L222.coords(8)


@pytest.mark.parametrize("n,parts,expected", [(10, 4, [3, 3, 2, 2]), (2, 3, [1, 1, 0]), (0, 2, [0, 0]), (8, 4, [2, 2, 2, 2])])
def test_split_counts(n, parts, expected):
    assert split_counts(n, parts) == expected
    assert offsets(expected)[-1] == n
