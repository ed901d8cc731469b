"""`hpclm cluster up|run|down|status`: an emulated cluster of network namespaces on this machine.

    hpclm cluster up --hosts 4 --rate 100mbit          # stays up until `down`
    hpclm cluster run --ranks-per-host 2 -- hpclm bench collectives ...
    hpclm cluster run --hosts 2 --rate 1gbit -- CMD    # a cluster just for CMD, removed afterwards
    hpclm cluster status
    hpclm cluster down                                 # also cleans up after a crashed run

Needs root (or CAP_NET_ADMIN). SIGINT/SIGTERM during `up` or an ephemeral `run` remove what was
built; during `run`, SIGTERM/SIGUSR1/SIGUSR2/SIGINT are forwarded to mpiexec, which passes
them to the ranks (hpclm train checkpoints on SIGUSR1/SIGTERM).
"""
import argparse
import json
import signal
import subprocess

from hpclm.cluster import hosts, launch, netns
from hpclm.errors import UserError

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="{up,run,down,status}")
    up = sub.add_parser("up", help="create N emulated hosts joined by links shaped to RATE")
    run = sub.add_parser("run", help="run an MPI command with k ranks per emulated host")
    down = sub.add_parser("down", help="remove the cluster (and any leftovers of a crashed run)")
    st = sub.add_parser("status", help="hosts, addresses, link rates and bytes sent")
    for p in (up, run, down, st):
        p.add_argument("--name", default="hpclm", help="cluster name, prefix of its namespaces (default hpclm)")
    for p in (up, run):
        p.add_argument("--hosts", type=int, help="number of emulated hosts (run: bring up a cluster for this run only)")
        p.add_argument("--rate", default="1gbit", help="link rate each way, tc units: 100mbit, 1gbit, 10gbit")
    run.add_argument("--ranks-per-host", "-k", type=int, default=1, help="MPI ranks on each host (default 1)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. hpclm train ...")
    st.add_argument("--json", action="store_true", help="print the plan and link counters as JSON")


def _plan(args):
    if args.hosts is None:
        raise UserError("cluster up needs --hosts N")
    try:
        return netns.Plan(args.name, args.hosts, netns.parse_rate(args.rate))
    except netns.PlanError as exc:
        raise UserError(str(exc)) from None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _up(args):
    plan = _plan(args)
    old = signal.signal(signal.SIGTERM, _raise_interrupt)   # Ctrl-C is already KeyboardInterrupt
    try:
        hosts.bring_up(plan)
    finally:
        signal.signal(signal.SIGTERM, old)
    print(f"cluster {plan.name}: {plan.hosts} hosts ({', '.join(plan.host_names)}), "
          f"{plan.rate_bits / 1e6:g} Mbit/s each way, addresses {plan.address(0)}..{plan.address(plan.hosts - 1)}")
    return plan


def _launch(plan, k, command):
    """Run the MPI job, forwarding signals to mpiexec; returns its exit code."""
    cmd = launch.mpiexec_command(plan, hosts.state_dir(plan.name), k, command, launch.find_mpiexec())
    child = subprocess.Popen(cmd, env=launch.job_environment())
    previous = {s: signal.signal(s, lambda signum, frame: child.send_signal(signum)) for s in FORWARDED}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(args):
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError("cluster run needs a command after --, e.g. hpclm cluster run -- hpclm train")
    if args.ranks_per_host < 1:
        raise UserError(f"--ranks-per-host must be >= 1, got {args.ranks_per_host}")
    hosts.require_privileges("run")
    if args.hosts is None:
        return _launch(hosts.load_plan(args.name), args.ranks_per_host, command)
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        plan = _up(args)
        signal.signal(signal.SIGTERM, old)
        return _launch(plan, args.ranks_per_host, command)
    finally:
        signal.signal(signal.SIGTERM, old)
        hosts.tear_down(args.name)


def _status(args):
    hosts.require_privileges("status")
    plan, rows = hosts.status(args.name)
    if args.json:
        print(json.dumps({"plan": plan.to_json(), "links": rows}, indent=1))
        return
    print(f"cluster {plan.name}: {plan.hosts} hosts, {plan.rate_bits / 1e6:g} Mbit/s each way")
    for row in rows:
        print(f"  {row['host']:<12} {row['address']:<14} send: {row['egress']}; receive: {row['ingress']}")


def run(args):
    if args.action == "up":
        _up(args)
    elif args.action == "run":
        return _run(args)
    elif args.action == "down":
        removed = hosts.tear_down(args.name)
        print(f"cluster {args.name}: removed {len(removed)} namespaces" + (f" ({', '.join(removed)})" if removed else ""))
    else:
        _status(args)
    return 0
