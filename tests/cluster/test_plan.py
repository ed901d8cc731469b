"""The emulated cluster's plan (names, addresses, ip/tc commands, mpiexec line) without root."""
import ipaddress
import os
import subprocess
import sys

import pytest

from hpclm.cluster import launch, netns

BENCH_NET = ipaddress.ip_network("198.18.0.0/15")


def test_rates_parse_in_tc_units():
    assert netns.parse_rate("100mbit") == 100_000_000
    assert netns.parse_rate("1gbit") == 10**9
    assert netns.parse_rate("2.5Gbit") == 2_500_000_000
    for bad in ("100", "fast", "100mbps", "-1gbit", "10kbit"):
        with pytest.raises(netns.PlanError):
            netns.parse_rate(bad)


def test_bad_names_and_host_counts_are_refused():
    for name in ("", "Hpclm", "9x", "a-b", "toolongname"):
        with pytest.raises(netns.PlanError):
            netns.Plan(name, 2, 10**8)
    for hosts in (0, 255):
        with pytest.raises(netns.PlanError):
            netns.Plan("c", hosts, 10**8)


def test_addresses_are_distinct_and_in_the_benchmarking_range():
    plan = netns.Plan("c", netns.MAX_HOSTS, 10**9)
    addrs = [ipaddress.ip_address(plan.address(i)) for i in range(plan.hosts)]
    assert len(set(addrs)) == plan.hosts
    assert all(a in BENCH_NET for a in addrs)
    for line in netns.hosts_file(plan).splitlines()[1:]:
        assert ipaddress.ip_address(line.split()[0]) in BENCH_NET


def _namespaces_touched(cmd):
    if cmd[:3] == ["ip", "netns", "add"]:
        return [cmd[3]]
    if cmd[:3] == ["ip", "netns", "exec"]:
        return [cmd[3]]
    assert cmd[1] == "-n", f"{cmd} would act in the root namespace"
    touched = [cmd[2]]
    if "netns" in cmd:
        touched.append(cmd[cmd.index("netns") + 1])
    return touched


def test_up_commands_stay_inside_own_namespaces_and_shape_both_directions():
    plan = netns.Plan("c", 3, 10**8)
    cmds = netns.up_commands(plan)
    for cmd in cmds:
        assert all(netns.owns("c", ns) for ns in _namespaces_touched(cmd)), cmd
        for word in cmd:
            if "/" in word and word[0].isdigit():
                assert ipaddress.ip_interface(word).network.subnet_of(BENCH_NET)
    shaped = {(c[2], c[c.index("dev") + 1]) for c in cmds if c[0] == "tc" and "tbf" in c}
    expected = {(plan.host(i), "eth0") for i in range(3)} | {("c-sw", f"p{i}") for i in range(3)}
    assert shaped == expected
    for c in cmds:
        if "tbf" in c:
            assert c[c.index("rate") + 1] == "100000000bit"
    assert cmds[0] == ["ip", "netns", "add", "c-sw"]


def test_down_deletes_only_own_namespaces_hosts_before_switch():
    others = ["c-sw", "c-h1", "c-h0", "cc-h0", "c-hx", "other", "c-h12"]
    cmds = netns.down_commands("c", others)
    assert [c[-1] for c in cmds] == ["c-h1", "c-h0", "c-h12", "c-sw"]
    assert netns.parse_namespaces("c-h0 (id: 1)\nc-sw\n\n") == ["c-h0", "c-sw"]


def test_mpiexec_runs_in_host_zero_with_k_ranks_per_host_over_tcp():
    plan = netns.Plan("c", 4, 10**9)
    cmd = launch.mpiexec_command(plan, "/state", 2, ["python", "x.py"], mpiexec="MPIEXEC")
    assert cmd[:4] == ["ip", "netns", "exec", "c-h0"]
    inner = cmd[cmd.index("MPIEXEC"):]
    assert inner == ["MPIEXEC", "-launcher", "ssh", "-launcher-exec", "/state/launch", "-f", "/state/hostfile",
                     "-ppn", "2", "-n", "8", "python", "x.py"]
    env = launch.job_environment({"FI_PROVIDER": "sockets"})
    assert env["FI_PROVIDER"] == "sockets" and env["MPIR_CVAR_CH4_NETMOD"] == "ofi" and env["FI_TCP_IFACE"] == "eth0"
    with pytest.raises(netns.PlanError):
        launch.mpiexec_command(plan, "/state", 0, ["x"])


@pytest.mark.skipif(not os.path.exists("/usr/bin/setpriv") or os.geteuid() != 0,
                    reason="needs root and setpriv to drop CAP_NET_ADMIN")
def test_without_net_admin_one_clear_error():
    proc = subprocess.run(["setpriv", "--bounding-set=-net_admin", sys.executable, "-m", "hpclm.cli",
                           "cluster", "up", "--hosts", "2", "--name", "noperm"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("hpclm: error: cluster up needs root (CAP_NET_ADMIN: network namespaces, "
                                   "veth links and tc qdiscs need them)")
    assert "noperm-sw" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_cli_usage_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "hpclm.cli", "cluster", "up", "--hosts", "2", "--rate", "fast"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("hpclm: error: rate 'fast'") and proc.stderr.count("\n") == 1
