"""The emulated cluster for real (root only): nothing left behind, shaped bandwidth, MPI across hosts.

Each test brings up its own small cluster under a test-only name and removes it. Skipped (with the
reason) only where this process may not create network namespaces.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpclm.cluster import hosts, netns
from hpclm.errors import UserError

pytestmark = pytest.mark.skipif(hosts.missing_privileges() is not None,
                                reason=f"emulated cluster needs {hosts.missing_privileges()}")
HERE = Path(__file__).resolve().parent
HPCLM = [sys.executable, "-m", "hpclm.cli", "cluster"]
NAMES = ("tup", "tbw", "tmpi", "tkill", "tfail")   # test-only cluster names (other clusters may run meanwhile)


def ours(names):
    return sorted(n for n in names if any(netns.owns(c, n) or n == c for c in NAMES))


def machine_state():
    """What a test cluster could leave behind: its namespaces, /etc/netns entries and state, and any
    link or qdisc in the root namespace (where the tool never adds any)."""
    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    etc = ours(os.listdir("/etc/netns")) if os.path.isdir("/etc/netns") else []
    links = [line.split(":")[1].split("@")[0].strip() for line in out("ip", "-o", "link").splitlines()]
    return {"netns": ours(netns.parse_namespaces(out("ip", "netns", "list"))), "links": sorted(links),
            "qdiscs": sorted(" ".join(line.split()[:5]) for line in out("tc", "qdisc", "show").splitlines()),
            "etc_netns": etc, "state": ours(os.listdir(hosts.STATE_ROOT)) if hosts.STATE_ROOT.is_dir() else []}


def cluster(*args, check=True, **kw):
    proc = subprocess.run(HPCLM + list(args), capture_output=True, text=True, **kw)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def clean():
    """Asserts the machine looks the same after the test as before it (and cleans up regardless)."""
    before = machine_state()
    yield
    for name in NAMES:
        hosts.tear_down(name)
    assert machine_state() == before


def test_up_shapes_both_directions_and_down_leaves_nothing(clean):
    cluster("up", "--name", "tup", "--hosts", "3", "--rate", "100mbit")
    plan, rows = hosts.status("tup")
    assert plan.hosts == 3 and [r["host"] for r in rows] == ["tup-h0", "tup-h1", "tup-h2"]
    for row in rows:
        assert row["egress"].startswith("rate 100Mbit") and row["ingress"].startswith("rate 100Mbit")
    assert "already up" in cluster("up", "--name", "tup", "--hosts", "2", check=False).stderr
    down = cluster("down", "--name", "tup")
    assert "removed 4 namespaces" in down.stdout


def test_failed_bring_up_rolls_back(clean, monkeypatch):
    real = netns.up_commands
    monkeypatch.setattr(netns, "up_commands", lambda plan: real(plan) + [["ip", "-n", plan.host(0), "link", "set", "nosuchdev", "up"]])
    with pytest.raises(UserError, match="nosuchdev"):
        hosts.bring_up(netns.Plan("tfail", 2, 10**8))
    assert not [ns for ns in hosts.namespaces() if netns.owns("tfail", ns)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_tears_down(clean, sig):
    proc = subprocess.Popen(HPCLM + ["run", "--name", "tkill", "--hosts", "2", "--", "sleep", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_namespaces("tkill", 3)
    time.sleep(1.0)   # mpiexec started
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert not [ns for ns in hosts.namespaces() if netns.owns("tkill", ns)]


def test_down_removes_leftovers_of_a_killed_run(clean):
    proc = subprocess.Popen(HPCLM + ["run", "--name", "tkill", "--hosts", "2", "--", "sleep", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_namespaces("tkill", 3)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)       # the tool, mpiexec and the ranks: no clean-up ran
    proc.wait()
    assert len([ns for ns in hosts.namespaces() if netns.owns("tkill", ns)]) == 3
    assert "removed 3 namespaces" in cluster("down", "--name", "tkill").stdout


def _wait_for_namespaces(name, count, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if len([ns for ns in hosts.namespaces() if netns.owns(name, ns)]) == count and (hosts.state_dir(name) / "plan.json").exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"cluster {name} did not come up")


def p2p(*args):
    out = cluster("run", "--name", "tbw", *args, "--", sys.executable, "-m", "hpclm.cluster.p2p", "--sizes", "1M",
                  "--bytes", "8M", "--rounds", "3", timeout=120).stdout
    return json.loads(out.splitlines()[-1])


# 1gbit lands within 10 % too when the cores are free (results/cluster/README.md), but there the
# ranks' CPU time limits the stream (0.71-0.84 Gbit/s seen while the machine ran 4 training ranks
# besides); at 100mbit the link does, at any load.
@pytest.mark.parametrize("rate,bits", [("100mbit", 1e8)])
def test_bandwidth_between_hosts_within_10_percent_of_the_rate(clean, rate, bits):
    result = p2p("--hosts", "2", "--rate", rate)
    assert result["hosts"] == ["tbw-h0", "tbw-h1"]
    goodput = result["streams"][0]["mbit_per_s"] * 1e6
    assert 0.9 * bits <= goodput <= 1.0 * bits, f"{goodput / 1e6:.1f} Mbit/s on a {rate} link"


def test_ranks_on_one_host_use_shared_memory_not_the_link(clean):
    result = p2p("--hosts", "1", "--rate", "100mbit", "--ranks-per-host", "2")
    assert result["hosts"] == ["tbw-h0", "tbw-h0"]
    assert result["streams"][0]["mbit_per_s"] > 10 * 100     # far above the 100 Mbit/s link


def test_allreduce_across_two_hosts_equals_mpi(clean):
    out = cluster("run", "--name", "tmpi", "--hosts", "2", "--rate", "1gbit", "--ranks-per-host", "2", "--",
                  sys.executable, str(HERE / "cluster_allreduce_job.py"), timeout=180).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["hosts"] == ["tmpi-h0", "tmpi-h0", "tmpi-h1", "tmpi-h1"]
    assert result["node_sizes"] == [2, 2, 2, 2]       # COMM_TYPE_SHARED sees two real nodes
    assert result["errors"] == {a: 0.0 for a in result["errors"]} and len(result["errors"]) == 5
