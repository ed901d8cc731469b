"""Executes a netns.Plan: bring-up (rolled back on any error or interrupt), tear-down, status.

Besides the namespaces, the cluster keeps two kinds of files, both removed by `tear_down`:
/etc/netns/<host>/hosts (which `ip netns exec` bind-mounts over /etc/hosts, so every host name
resolves inside the cluster) and the state directory /run/hpclm-cluster/<name>/ (the plan,
the hydra hosts file and the launcher script that starts a process inside a host).
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

from hpclm.cluster import netns
from hpclm.errors import UserError

STATE_ROOT = Path(os.environ.get("HPCLM_CLUSTER_STATE", "/run/hpclm-cluster"))
NETNS_ETC = Path("/etc/netns")
CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}   # links/qdiscs; mounting /run/netns and UTS namespaces
LAUNCHER = """#!/bin/sh
# hydra's ssh launcher calls: THIS [-x] HOST COMMAND... ; run COMMAND inside emulated HOST, with
# HOST as its host name (own UTS namespace), as ssh would run it on a real node.
[ "$1" = -x ] && shift
host="$1"; shift
case "$host" in {name}-h[0-9]*) ;; *) echo "hpclm cluster: $host is not a host of cluster {name}" >&2; exit 255;; esac
exec ip netns exec "$host" unshare --uts sh -c "hostname $host && exec $*"
"""


def missing_privileges():
    """None if this process may create namespaces and qdiscs, else what is missing (one phrase)."""
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (package iproute2 / util-linux)"
    status = Path("/proc/self/status").read_text()
    cap_eff = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    lacking = [name for name, bit in CAPABILITIES.items() if not cap_eff >> bit & 1]
    if lacking:
        return f"root ({' and '.join(lacking)}: network namespaces, veth links and tc qdiscs need them)"
    return None


def require_privileges(what):
    missing = missing_privileges()
    if missing:
        raise UserError(f"cluster {what} needs {missing}")


def sh(cmd, check=True):
    """Run one ip/tc command; a failure becomes a UserError naming the command and its message."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise UserError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def namespaces():
    return netns.parse_namespaces(sh(["ip", "netns", "list"]))


def state_dir(name):
    return STATE_ROOT / name


def load_plan(name):
    """The plan of the cluster `name` that is up, or a UserError saying it is not up."""
    path = state_dir(name) / "plan.json"
    present = [ns for ns in namespaces() if netns.owns(name, ns)]
    if not path.is_file() or not present:
        raise UserError(f"cluster {name!r} is not up (hpclm cluster up --name {name} --hosts N --rate R)")
    d = json.loads(path.read_text())
    return netns.Plan(d["name"], d["hosts"], d["rate_bits"])


def bring_up(plan):
    """Create the cluster; on any failure (or Ctrl-C / SIGTERM) remove what was made and re-raise."""
    require_privileges("up")
    if any(netns.owns(plan.name, ns) for ns in namespaces()) or state_dir(plan.name).exists():
        raise UserError(f"cluster {plan.name!r} is already up or left over: hpclm cluster down --name {plan.name}")
    try:
        state = state_dir(plan.name)
        state.mkdir(parents=True)
        for cmd in netns.up_commands(plan):
            sh(cmd)
        for host in plan.host_names:
            (NETNS_ETC / host).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / host / "hosts").write_text(netns.hosts_file(plan))
        (state / "hostfile").write_text("".join(f"{h}\n" for h in plan.host_names))
        launcher = state / "launch"
        launcher.write_text(LAUNCHER.format(name=plan.name))
        launcher.chmod(0o755)
        (state / "plan.json").write_text(json.dumps(plan.to_json(), indent=1) + "\n")
    except BaseException:
        tear_down(plan.name)
        raise
    return plan


def tear_down(name):
    """Remove every namespace, hosts file and state file of cluster `name` (also a crashed run's)."""
    require_privileges("down")
    removed = []
    for cmd in netns.down_commands(name, namespaces()):
        sh(cmd, check=False)
        removed.append(cmd[-1])
    if NETNS_ETC.is_dir():
        for d in NETNS_ETC.iterdir():
            if netns.owns(name, d.name):
                shutil.rmtree(d, ignore_errors=True)
        if not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()
    shutil.rmtree(state_dir(name), ignore_errors=True)
    return removed


def status(name):
    """Per host: address, qdiscs of both link directions, bytes sent through them."""
    plan = load_plan(name)
    rows = []
    for i, host in enumerate(plan.host_names):
        out = sh(["tc", "-n", host, "-s", "qdisc", "show", "dev", netns.HOST_IFACE])
        back = sh(["tc", "-n", plan.switch, "-s", "qdisc", "show", "dev", f"p{i}"])
        rows.append({"host": host, "address": plan.address(i), "egress": _tbf_summary(out),
                     "ingress": _tbf_summary(back)})
    return plan, rows


def _tbf_summary(tc_output):
    """'rate 100Mbit, sent 1234 B' from `tc -s qdisc show` output of a tbf qdisc."""
    words = tc_output.split()
    rate = words[words.index("rate") + 1] if "rate" in words else "unshaped"
    sent = words[words.index("Sent") + 1] if "Sent" in words else "0"
    return f"rate {rate}, sent {sent} B"
