"""Runs every tests/mpi/test_*.py file under `mpiexec -n P` for each P its MPI_SIZES names.

Each launch has a timeout, so a deadlock fails the test instead of hanging the suite. Inside a
file, tests make all ranks agree before asserting (tests/mpi/conftest.py: `assert_all`).
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainutil import mpiexec

MPI_DIR = Path(__file__).parent / "mpi"
TIMEOUT_S = int(os.environ.get("HPCLM_MPI_TEST_TIMEOUT", "300"))


def _sizes(path):
    """The MPI_SIZES tuple declared at module level of a test file (default (2,))."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MPI_SIZES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return (2,)


CASES = [(p, n) for p in sorted(MPI_DIR.glob("test_*.py")) for n in _sizes(p)]


@pytest.mark.parametrize("path,nprocs", CASES, ids=[f"{p.stem}-n{n}" for p, n in CASES])
def test_under_mpiexec(path, nprocs):
    env = dict(os.environ, HPCLM_UNDER_MPI="1", PYTHONUNBUFFERED="1")
    # More ranks than cores (4-5 ranks on a 2-core laptop/CI): MPICH busy-polls in every blocking
    # call; heavy yield (nanosleep between polls) lets the rank that has work run. Measured on 2
    # cores: collectives suites 20 s instead of 23 s. Benchmarks keep busy polling (see env.sh).
    env.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable, "-m", "pytest", "-q", "-x",
           "-p", "no:cacheprovider", str(path)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        out = (out.decode(errors="replace") if isinstance(out, bytes) else out)[-4000:]
        pytest.fail(f"{path.name} at -n {nprocs} timed out after {TIMEOUT_S}s (deadlock?)\n{out}")
    assert proc.returncode == 0, f"{path.name} at -n {nprocs} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
