"""Building blocks, byte counters against closed forms, non-blocking all-reduce, Groups."""
import numpy as np
import pytest
from mpi4py import MPI

from hpclm import comm
from hpclm.comm.layout import offsets, split_counts
from hpclm.errors import UserError

from conftest import assert_all

MPI_SIZES = (1, 2, 3, 4)


def ranks_data(n, rank, dtype="int64"):
    return (np.arange(n) + 100 * rank).astype(dtype)                     # (n,)


# --- building blocks -------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["ring", "mpi"])
@pytest.mark.parametrize("n", [0, 1, 3, 10, 1001])
def test_reduce_scatter_and_allgather_round_trip(world, algorithm, n):
    P, r = world.Get_size(), world.Get_rank()
    x = ranks_data(n, r)
    total = sum(ranks_data(n, q) for q in range(P))
    starts = offsets(split_counts(n, P))
    mine = comm.reduce_scatter(world, x, np.empty(starts[r + 1] - starts[r], x.dtype), algorithm=algorithm)
    assert_all(world, np.array_equal(mine, total[starts[r]:starts[r + 1]]), f"reduce_scatter {mine}")
    assert_all(world, np.array_equal(x, ranks_data(n, r)), "out-of-place reduce_scatter changed sendbuf")
    in_place = comm.reduce_scatter(world, x.copy(), algorithm=algorithm)
    assert_all(world, np.array_equal(in_place, mine), "in-place reduce_scatter")
    full = comm.allgather(world, mine, np.empty(n, x.dtype), algorithm=algorithm)
    assert_all(world, np.array_equal(full, total), f"allgather {full}")


def uneven_counts(n, P):
    """ZeRO-like block counts: zeros, one big block, a remainder (sums to n)."""
    counts = [0] * P
    counts[-1] = n
    if P > 2:
        counts[1], counts[-1] = n // 3, n - n // 3
    return counts


@pytest.mark.parametrize("algorithm", ["ring", "mpi"])
@pytest.mark.parametrize("n", [0, 1, 10, 1001])
def test_blocks_with_explicit_counts(world, algorithm, n):
    """reduce_scatter / allgather on given block counts (zeros allowed) equal the reduction's blocks;
    the ring sends every block but its own, and rank-0-owned bytes travel under the caller's group."""
    P, r = world.Get_size(), world.Get_rank()
    counts = uneven_counts(n, P)
    starts = offsets(counts)
    x = ranks_data(n, r, "float64")
    total = sum(ranks_data(n, q, "float64") for q in range(P))
    comm.counters.reset()
    mine = comm.reduce_scatter(world, x.copy(), algorithm=algorithm, counts=counts)
    sent = comm.counters.snapshot()[f"reduce_scatter:{algorithm}"]["bytes_sent"] if P > 1 else 0
    assert_all(world, np.array_equal(mine, total[starts[r]:starts[r + 1]]), f"reduce_scatter {mine}")
    assert_all(world, P == 1 or sent == (n - counts[r]) * 8, f"sent {sent} vs {(n - counts[r]) * 8}")
    full = np.zeros(n)
    comm.allgather(world, mine.copy(), full, algorithm=algorithm, counts=counts)
    assert_all(world, np.array_equal(full, total), f"allgather {full}")
    in_place = total.copy()
    in_place[:] = -1
    in_place[starts[r]:starts[r + 1]] = mine
    comm.allgather(world, in_place[starts[r]:starts[r + 1]], in_place, algorithm=algorithm, counts=counts)
    assert_all(world, np.array_equal(in_place, total), "allgather from a view of its own recvbuf")
    with pytest.raises(UserError, match="do not split"):
        comm.reduce_scatter(world, x.copy(), algorithm=algorithm, counts=[n + 1] + [0] * (P - 1))


@pytest.mark.parametrize("algorithm", ["tree", "mpi"])
def test_bcast_and_reduce_from_every_root(world, algorithm):
    P, r = world.Get_size(), world.Get_rank()
    for root in range(P):
        buf = ranks_data(7, r, "float64")
        comm.bcast(world, buf, root=root, algorithm=algorithm)
        assert_all(world, np.array_equal(buf, ranks_data(7, root, "float64")), f"bcast root {root}")
        out = comm.reduce(world, ranks_data(7, r, "float64"), np.empty(7), op="max", root=root, algorithm=algorithm)
        if r == root:
            assert_all(world, np.array_equal(out, ranks_data(7, P - 1, "float64")), f"reduce root {root}")
        else:
            assert_all(world, True)


@pytest.mark.parametrize("algorithm", ["pairwise", "mpi"])
def test_alltoall(world, algorithm):
    P, r, k = world.Get_size(), world.Get_rank(), 3
    send = np.array([100 * r + j for j in range(P) for _ in range(k)], np.int32)   # block j = 100r + j
    got = comm.alltoall(world, send, algorithm=algorithm)
    expected = np.array([100 * i + r for i in range(P) for _ in range(k)], np.int32)
    assert_all(world, np.array_equal(got, expected), f"{got} != {expected}")
    if P > 1:
        with pytest.raises(UserError, match="divisible"):
            comm.alltoall(world, np.ones(P + 1, np.int32))


# --- byte counters against closed forms ------------------------------------------------------

def counted(world, algorithm, n, itemsize=8):
    comm.counters.reset()
    comm.allreduce(world, np.ones(n, np.int64), algorithm=algorithm)
    tally = comm.counters.snapshot()[algorithm]
    totals = world.allreduce(np.array([tally["bytes_sent"], tally["bytes_recv"]]))
    return tally, totals


def test_ring_sends_2_p_minus_1_over_p_of_the_buffer(world):
    P, r = world.Get_size(), world.Get_rank()
    for n in (12 * 5 * 7, 1001):                       # divisible by every P here, and not
        tally, _ = counted(world, "ring", n)
        block = [c * 8 for c in split_counts(n, P)]
        N = n * 8
        sent = 0 if P == 1 else 2 * N - block[r] - block[(r + 1) % P]
        recv = 0 if P == 1 else 2 * N - block[(r - 1) % P] - block[r]
        assert_all(world, (tally["bytes_sent"], tally["bytes_recv"], tally["calls"]) == (sent, recv, 1),
                   f"n={n}: {tally} != sent {sent} recv {recv}")
        if n % P == 0:
            assert_all(world, tally["bytes_sent"] == 2 * (P - 1) * N // P)


def test_recursive_algorithms_volume(world):
    P, r = world.Get_size(), world.Get_rank()
    pof2 = 1 << (P.bit_length() - 1)
    rem, steps, N = P - pof2, pof2.bit_length() - 1, 840 * 8   # 840 divisible by 1..8
    tally, totals = counted(world, "recursive_doubling", 840)
    if r >= 2 * rem:
        expected = steps * N
    else:
        expected = N if r % 2 == 0 else (steps + 1) * N     # folded-out ranks only fold; survivors fold too
    assert_all(world, tally["bytes_sent"] == expected == tally["bytes_recv"], f"rd {tally} != {expected}")
    _, totals = counted(world, "rabenseifner", 840)
    expected_total = 2 * rem * N + 2 * (pof2 - 1) * N
    assert_all(world, list(totals) == [expected_total] * 2, f"rabenseifner totals {totals} != {expected_total}")


@pytest.mark.parametrize("algorithm", ["tree", "hierarchical", "mpi"])
def test_tree_like_volume(world, algorithm):
    P, N = world.Get_size(), 840 * 8
    _, totals = counted(world, algorithm, 840)
    expected = 2 * (P - 1) * N     # tree: every rank but the root sends once up and receives once down
    if algorithm == "mpi":
        expected = P * (2 * (P - 1) * N // P)               # charged the bandwidth-optimal volume
    assert_all(world, list(totals) == [expected] * 2, f"{algorithm} totals {totals} != {expected}")


def test_counters_count_calls_and_reset(world):
    comm.counters.reset()
    x = np.ones(5, np.float32)
    for _ in range(3):
        comm.allreduce(world, x, algorithm="tree")
    comm.allgather(world, np.ones(2, np.float32))
    snap = comm.counters.snapshot()
    assert_all(world, snap["tree"]["calls"] == 3 and snap["allgather:ring"]["calls"] == 1, snap)
    comm.counters.reset()
    assert_all(world, comm.counters.snapshot() == {})


# --- non-blocking ----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["ring", "recursive_doubling", "mpi"])
def test_iallreduce_completes_while_caller_computes(world, algorithm):
    P, r = world.Get_size(), world.Get_rank()
    grads = [np.full(300_001, r + 1.0, np.float32), np.full(17, 2.0 * r, np.float64)]
    reqs = [comm.iallreduce(world, g, algorithm=algorithm) for g in grads]   # two in flight, in order
    a = np.random.default_rng(r).standard_normal((200, 200))
    for _ in range(20):
        a = np.tanh(a @ a.T / 200)                                           # the caller computes meanwhile
    results = [req.wait(timeout=60) for req in reqs]
    ok = np.all(results[0] == P * (P + 1) / 2) and np.all(results[1] == P * (P - 1)) and results[0] is grads[0]
    assert_all(world, ok and all(req.test() for req in reqs), f"{algorithm}: {results[0][:3]} {results[1][:3]}")
    rs = comm.ireduce_scatter(world, np.ones(10, np.float64), op="average").wait(timeout=60)
    assert_all(world, np.all(rs == 1.0) and rs.size == split_counts(10, P)[r])


def test_iallreduce_reports_errors_at_wait(world):
    req = comm.iallreduce(world, np.ones(3, np.int32), op="average")
    with pytest.raises(UserError, match="floating-point"):
        req.wait(timeout=60)


# --- groups ----------------------------------------------------------------------------------

def test_groups_match_the_layout(world):
    P, r = world.Get_size(), world.Get_rank()
    for tp, pp in [(1, 1), (P, 1), (1, P)]:
        groups = comm.Groups.build(world, tp=tp, pp=pp)
        try:
            for kind in ("dp", "tp", "pp"):
                members = getattr(groups, kind).allgather(r)
                assert_all(world, members == groups.layout.group(kind, r), f"{kind}: {members}")
            assert_all(world, groups.node.Get_size() == P)     # one machine
        finally:
            groups.free()
    assert_all(world, groups.dp == MPI.COMM_NULL)
    if P in (3, 4):
        with pytest.raises(UserError, match="world size") as info:
            comm.Groups.build(world, dp=2, tp=2, pp=2)
        assert_all(world, getattr(info.value, "collective", False))
