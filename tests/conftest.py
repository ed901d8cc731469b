"""Test layout: tests/unit (one process), tests/mpi (run under mpiexec by test_mpi_suites.py), tests/gpu."""
import os

# tests/mpi/* are only collected inside an mpiexec launched by tests/test_mpi_suites.py.
collect_ignore_glob = [] if os.environ.get("HPCLM_UNDER_MPI") else ["mpi/*"]
