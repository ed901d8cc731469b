"""Helpers for tests run under mpiexec: the world communicator and rank-agreeing assertions."""
import pytest
from mpi4py import MPI


@pytest.fixture
def world():
    return MPI.COMM_WORLD


def assert_all(comm, ok, message=""):
    """Assert on every rank that `ok` held on every rank (so one rank's failure fails them all
    at the same point instead of leaving the others blocked in a collective)."""
    ok_everywhere = comm.allreduce(bool(ok), op=MPI.LAND)
    failed = comm.allgather(None if ok else str(message))
    assert ok_everywhere, "; ".join(f"rank {r}: {m}" for r, m in enumerate(failed) if m is not None)
