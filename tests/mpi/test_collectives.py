"""Every all-reduce algorithm, op, dtype and awkward size, against MPI's own Allreduce."""
import numpy as np
import pytest
from mpi4py import MPI

from hpclm import comm
from hpclm.comm import algorithms
from hpclm.errors import UserError

from conftest import assert_all

MPI_SIZES = (1, 2, 3, 4, 5)
DTYPES = ("float16", "float32", "float64", "int32", "int64")
MPI_OP = {"sum": MPI.SUM, "max": MPI.MAX, "average": MPI.SUM}


def sizes(P):
    """0, 1, fewer than P, not divisible by P, and a few thousand elements."""
    return sorted({0, 1, max(P - 1, 1), 2 * P + 1, 4099})


def data(n, dtype, rank):
    """Rank-dependent values whose sums are exact in every dtype (float16 included) for P <= 5."""
    return ((np.arange(n) * 7 + 3 * rank) % 17 - 8).astype(dtype)         # (n,)


def reference(world, x, op):
    out = np.empty_like(x)
    world.Allreduce(x, out, op=MPI_OP[op])
    if op == "average":
        out = out / world.Get_size()
    return out


@pytest.mark.parametrize("algorithm", comm.ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_mpi_allreduce(world, algorithm, dtype):
    bad = []
    for op in comm.OPS:
        if op == "average" and np.dtype(dtype).kind != "f":
            continue
        for n in sizes(world.Get_size()):
            x = data(n, dtype, world.Get_rank())
            expected = reference(world, x, op)
            got = comm.allreduce(world, x.copy(), op=op, algorithm=algorithm)          # in place
            out = comm.allreduce(world, x, np.empty_like(x), op=op, algorithm=algorithm)  # out of place
            exact = np.dtype(dtype).kind == "i" or op != "average"
            for result in (got, out):
                same = np.array_equal(result, expected) if exact else np.allclose(result, expected, rtol=1e-3)
                if not same or result.dtype != x.dtype:
                    bad.append(f"{op} n={n}")
            if not np.array_equal(x, data(n, dtype, world.Get_rank())):
                bad.append(f"{op} n={n}: out-of-place call changed sendbuf")
    assert_all(world, not bad, f"{algorithm} {dtype}: {bad}")


@pytest.mark.parametrize("algorithm", ["ring", "rabenseifner", "recursive_doubling", "tree"])
def test_large_segmented_float_buffers(world, algorithm, monkeypatch):
    """Small segments force the pipelined path (many segments per step); floats within tolerance."""
    monkeypatch.setattr(algorithms, "SEGMENT_BYTES", 4096)
    rng = np.random.default_rng(world.Get_rank())
    x = rng.standard_normal(200_003).astype(np.float32)
    expected = reference(world, x, "sum")
    got = comm.allreduce(world, x.copy(), algorithm=algorithm)
    assert_all(world, np.allclose(got, expected, rtol=1e-5, atol=1e-5), f"{algorithm}: max err {np.abs(got - expected).max()}")
    all_results = world.allgather(got)
    assert_all(world, all(np.array_equal(r, got) for r in all_results), "ranks disagree on the result")


def test_hierarchical_with_emulated_nodes(world, monkeypatch):
    """HPCLM_RANKS_PER_NODE=2 makes blocks of 2 ranks 'nodes', so the inter-leader ring runs."""
    monkeypatch.setenv("HPCLM_RANKS_PER_NODE", "2")
    fresh = world.Dup()                      # node split is cached per communicator
    try:
        for n in sizes(world.Get_size()):
            x = data(n, "int64", world.Get_rank())
            got = comm.hierarchical(fresh, x.copy())
            assert_all(world, np.array_equal(got, reference(world, x, "sum")), f"n={n}")
    finally:
        fresh.Free()


def test_auto_picks_by_the_model(world):
    small, large = np.ones(2, np.float32), np.ones(1 << 20, np.float32)
    assert_all(world, comm.choose(world, small.nbytes) in comm.ALGORITHMS)
    if world.Get_size() > 1:
        assert_all(world, comm.choose(world, small.nbytes) == "recursive_doubling", comm.choose(world, small.nbytes))
        assert_all(world, comm.choose(world, large.nbytes) != "tree", comm.choose(world, large.nbytes))
    assert_all(world, np.all(comm.auto(world, large) == world.Get_size()))


def test_clear_errors(world):
    x = np.ones(4, np.int32)
    with pytest.raises(UserError, match="unknown all-reduce algorithm 'bogus'"):
        comm.allreduce(world, x, algorithm="bogus")
    with pytest.raises(UserError, match="needs a floating-point"):
        comm.allreduce(world, x, op="average")
    with pytest.raises(UserError, match="unknown op"):
        comm.allreduce(world, x, op="prod")
    with pytest.raises(UserError, match="must match"):
        comm.allreduce(world, x, np.ones(5, np.int32))
    with pytest.raises(UserError, match="not supported"):
        comm.allreduce(world, np.ones(4, np.uint8))
    with pytest.raises(UserError, match="C-contiguous"):
        comm.allreduce(world, np.ones((4, 4), np.float32)[:, 1])


@pytest.mark.parametrize("algorithm", comm.ALGORITHMS)
def test_callable_op_reduces_bf16_bits(world, algorithm):
    """A callable op (here bf16_sum on uint16 bf16 bits, which MPI cannot add) works with every
    algorithm; "mpi" runs as "ring". Small integers keep every partial sum exact in bf16, so the
    result is exact whatever the order; adding the uint16 words as integers would not be."""
    from hpclm.compress.bf16 import bf16_sum, from_bf16_bits, to_bf16_bits
    P, r = world.Get_size(), world.Get_rank()
    n = 1000
    values = (np.arange(n) % 7 + r + 1).astype(np.float32)                 # (n,) small integers
    got = from_bf16_bits(comm.allreduce(world, to_bf16_bits(values), op=bf16_sum, algorithm=algorithm))
    expect = sum((np.arange(n) % 7 + q + 1).astype(np.float32) for q in range(P))
    assert_all(world, np.array_equal(got, expect), f"{algorithm}: max |d| {np.abs(got - expect).max()}")
    f16 = comm.allreduce(world, values.astype(np.float16), op=lambda acc, other: np.add(acc, other, out=acc),
                         algorithm=algorithm)
    assert_all(world, f16.dtype == np.float16 and np.array_equal(f16.astype(np.float32), expect), f"{algorithm} fp16")
