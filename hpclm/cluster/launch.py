"""The mpiexec command and environment that run k ranks on each emulated host.

mpiexec (hydra) runs inside host 0 (its namespace and host name) and starts one proxy per host
through its ssh launcher, pointed at the cluster's launcher script (`ip netns exec HOST unshare
--uts`: HOST's network and host name). Hydra puts the ranks of one proxy on one node, so MPICH
uses shared memory between ranks of a host and its network module between hosts; the
environment makes that module libfabric's TCP provider over eth0, the shaped link.
"""
import os
import shutil
import sys
from pathlib import Path

from hpclm.cluster import netns

TCP_ENV = {
    "MPIR_CVAR_CH4_NETMOD": "ofi",   # the wheel has ucx and ofi: use ofi ...
    "FI_PROVIDER": "tcp",            # ... with its TCP provider (sockets on eth0)
    "FI_TCP_IFACE": netns.HOST_IFACE,
}


def find_mpiexec():
    """The mpiexec next to this Python (the venv's mpich wheel), else the first on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")


def in_host(host, argv):
    """argv run inside emulated `host` (its network namespace, its host name)."""
    return ["ip", "netns", "exec", host, "unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh"] + argv


def mpiexec_command(plan, state, ranks_per_host, argv, mpiexec="mpiexec"):
    """Command running `argv` as hosts*ranks_per_host MPI ranks, ranks k*i..k*i+k-1 on host i."""
    if ranks_per_host < 1:
        raise netns.PlanError(f"ranks per host must be >= 1, got {ranks_per_host}")
    n = plan.hosts * ranks_per_host
    inner = [mpiexec, "-launcher", "ssh", "-launcher-exec", str(Path(state) / "launch"),
             "-f", str(Path(state) / "hostfile"), "-ppn", str(ranks_per_host), "-n", str(n)] + list(argv)
    return in_host(plan.host(0), inner)


def job_environment(base=None):
    """The caller's environment plus the TCP settings (a value already set by the caller wins)."""
    env = dict(os.environ if base is None else base)
    for key, value in TCP_ENV.items():
        env.setdefault(key, value)
    return env
