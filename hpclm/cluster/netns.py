"""Pure planning of an emulated cluster: names, addresses, shaping parameters and the commands.

Topology (everything lives in namespaces the tool creates; nothing is added to the root one):

    <name>-sw            the switch: a bridge `br0` and one port `p<i>` per host
    <name>-h<i>          host i: interface `eth0` (veth peer of p<i>), address 198.18.0.<i+1>/24 (IPv4 only)

Each link is shaped in both directions with a token bucket (`tbf`): on the host's eth0
(egress = what the host sends) and on the switch's p<i> (egress = what the host receives), so a
host's send and receive rates are each capped at `rate`, like a full-duplex NIC. No latency is
added (the kernel has no `netem`); the links keep veth's own delay.
"""
import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit)$")
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
SUBNET = "198.18.0"         # inside the benchmarking range 198.18.0.0/15 (RFC 2544)
PREFIX_LEN = 24
MAX_HOSTS = 254
HOST_IFACE = "eth0"
BRIDGE = "br0"
MIN_BURST_BYTES = 64 * 1024  # at least ~40 full-size frames
BURST_SECONDS = 0.004        # bucket depth: 4 ms at the link rate (a late qdisc timer on a busy CPU costs no rate)
QUEUE_SECONDS = 0.05         # tbf `latency`: the longest a packet may wait in the queue


class PlanError(ValueError):
    """A cluster description that cannot be built (bad name, rate or host count)."""


def parse_rate(text):
    """'100mbit' -> 100_000_000 bits/s (tc's decimal units; 'unlimited' is not a rate here)."""
    m = RATE_RE.match(text.strip().lower())
    if not m:
        raise PlanError(f"rate {text!r}: expected a number and one of {', '.join(RATE_UNITS)} (e.g. 100mbit, 1gbit)")
    bits = float(m.group(1)) * RATE_UNITS[m.group(2)]
    if bits < 10**5:
        raise PlanError(f"rate {text!r} is below 100kbit")
    return int(bits)


@dataclass(frozen=True)
class Plan:
    """N hosts named <name>-h0.. with links of `rate_bits` bits/s each way."""
    name: str
    hosts: int
    rate_bits: int

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise PlanError(f"cluster name {self.name!r}: 1-8 lower-case letters/digits, starting with a letter")
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise PlanError(f"hosts={self.hosts}: between 1 and {MAX_HOSTS}")

    @property
    def switch(self):
        return f"{self.name}-sw"

    def host(self, i):
        return f"{self.name}-h{i}"

    @property
    def host_names(self):
        return [self.host(i) for i in range(self.hosts)]

    def address(self, i):
        return f"{SUBNET}.{i + 1}"

    @property
    def burst_bytes(self):
        return max(MIN_BURST_BYTES, int(self.rate_bits / 8 * BURST_SECONDS))

    def to_json(self):
        return {"name": self.name, "hosts": self.hosts, "rate_bits": self.rate_bits,
                "host_names": self.host_names, "addresses": [self.address(i) for i in range(self.hosts)],
                "burst_bytes": self.burst_bytes, "latency_added": None}


def owns(name, namespace):
    """True if `namespace` is one this tool creates for the cluster `name`."""
    return re.fullmatch(rf"{re.escape(name)}-(sw|h\d+)", namespace) is not None


def tbf(namespace, dev, plan):
    """tc command that caps egress of `dev` in `namespace` at the plan's rate."""
    return ["tc", "-n", namespace, "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{plan.rate_bits}bit", "burst", str(plan.burst_bytes), "latency", f"{int(QUEUE_SECONDS * 1000)}ms"]


def up_commands(plan):
    """The ip/tc commands that build the cluster, in order (each one undone by deleting namespaces)."""
    sw = plan.switch
    cmds = [["ip", "netns", "add", sw],
            ["ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "-n", sw, "link", "set", BRIDGE, "up"]]
    for i, host in enumerate(plan.host_names):
        port = f"p{i}"
        cmds += [["ip", "netns", "add", host],
                 ["ip", "-n", host, "link", "set", "lo", "up"],
                 ["ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                 ["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE, "netns", host],
                 ["ip", "-n", sw, "link", "set", port, "master", BRIDGE],
                 ["ip", "-n", sw, "link", "set", port, "up"],
                 ["ip", "-n", host, "addr", "add", f"{plan.address(i)}/{PREFIX_LEN}", "dev", HOST_IFACE],
                 ["ip", "-n", host, "link", "set", HOST_IFACE, "up"],
                 tbf(host, HOST_IFACE, plan),
                 tbf(sw, port, plan)]
    return cmds


def down_commands(name, namespaces):
    """Commands deleting every namespace of cluster `name` among `namespaces` (hosts first).

    Deleting a namespace destroys its interfaces (and so the veth peers and qdiscs) with it.
    """
    mine = [ns for ns in namespaces if owns(name, ns)]
    mine.sort(key=lambda ns: ns.endswith("-sw"))
    return [["ip", "netns", "delete", ns] for ns in mine]


def hosts_file(plan):
    """/etc/hosts text for inside the namespaces: every emulated host by name."""
    lines = ["127.0.0.1 localhost"] + [f"{plan.address(i)} {h}" for i, h in enumerate(plan.host_names)]
    return "\n".join(lines) + "\n"


def parse_namespaces(ip_netns_list_output):
    """Names from `ip netns list` output ('name' or 'name (id: 3)' per line)."""
    return [line.split()[0] for line in ip_netns_list_output.splitlines() if line.strip()]
