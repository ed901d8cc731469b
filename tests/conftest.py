"""Test layout: tests/unit (one process), tests/mpi (run under mpiexec by test_mpi_suites.py), tests/gpu."""
import glob
import os
import time

# tests/mpi/* are only collected inside an mpiexec launched by tests/test_mpi_suites.py.
collect_ignore_glob = [] if os.environ.get("HPCLM_UNDER_MPI") else ["mpi/*"]


def pytest_configure(config):
    config.hpclm_started = time.time() - 1


def pytest_sessionfinish(session, exitstatus):
    """Remove the MPICH shared-memory segments (/dev/shm/mpich_shm_*) this session's killed ranks
    left behind (the fault tests SIGKILL ranks on purpose): files created since the session began
    that no process holds open or mapped. Unremoved, they fill /dev/shm run after run."""
    if os.environ.get("HPCLM_UNDER_MPI"):
        return
    held = _held_shm_files()
    for path in glob.glob("/dev/shm/mpich_shm_*"):
        try:
            if os.stat(path).st_mtime >= session.config.hpclm_started and path not in held:
                os.unlink(path)
        except OSError:
            pass


def _held_shm_files():
    """Paths under /dev/shm that some process has open or mapped."""
    held = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/dev/shm/"):
                    held.add(target)
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.split(None, 5)
                    if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                        held.add(fields[5].strip())
        except OSError:
            continue
    return held
