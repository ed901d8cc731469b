"""Gossip topologies as mixing matrices: pure arithmetic of rank and world size (no MPI).

    topo = build_topology("exp2", P)
    W = topo.matrix(step)            # (P, P) doubly stochastic: x_i <- sum_j W[i, j] x_j
    self_w, inbound, outbound = topo.peers(rank, step)
                                     # inbound [(j, W[i, j])] ranks i receives from, outbound [k] it sends to
    spectral_gap(W)                  # 1 - |lambda_2|: gossip averaging shrinks ||x - mean|| by |lambda_2| a step

Topologies (any P >= 1):
  ring            undirected cycle i +- 1                     Metropolis-Hastings weights (1/3 each for P >= 3)
  torus           2-D wrap-around grid r x c, r the largest divisor of P with r <= sqrt(P) (r = 1: the ring)
  exp2            directed: i sends to i + 2^k mod P for every 2^k < P (Lian et al. 2017's exponential
                  graph), weight 1/(peers + 1); a circulant matrix, so doubly stochastic for every P
  one_peer_exp    dynamic: at step t the single offset 2^(t mod m) of exp2, weight 1/2
                  (for P a power of two, m = log2 P consecutive steps average exactly)
  star            undirected hub 0 to every other rank, Metropolis-Hastings weights (irregular graph)
  fully_connected W = 1/P everywhere (gossip equals exact averaging)

Undirected graphs take Metropolis-Hastings weights W_ij = 1 / (1 + max(d_i, d_j)) for an edge,
W_ii = 1 - sum_j W_ij: symmetric with unit row sums, hence doubly stochastic, for any degree sequence.
"""
import numpy

from hpclm.errors import UserError

TOPOLOGY_NAMES = ("ring", "torus", "exp2", "one_peer_exp", "star", "fully_connected")


def metropolis_hastings(neighbours):
    """(P, P) weights of an undirected graph given as a list of neighbour sets per rank."""
    P = len(neighbours)
    W = numpy.zeros((P, P))
    for i, peers in enumerate(neighbours):
        for j in peers:
            W[i, j] = 1.0 / (1 + max(len(neighbours[i]), len(neighbours[j])))
    W[numpy.diag_indices(P)] = 1.0 - W.sum(axis=1)
    return W


def circulant(P, offsets):
    """(P, P) uniform average of self and the ranks `offsets` below: x_i <- mean(x_i, x_{i-o} for o)."""
    W = numpy.zeros((P, P))
    offsets = sorted({o % P for o in offsets} - {0})
    w = 1.0 / (len(offsets) + 1)
    for i in range(P):
        W[i, i] = w
        for o in offsets:
            W[i, (i - o) % P] += w
    return W


def torus_shape(P):
    """(rows, cols) of the most square factorisation rows x cols = P, rows <= cols."""
    rows = max(r for r in range(1, int(numpy.sqrt(P)) + 1) if P % r == 0)
    return rows, P // rows


def exp2_offsets(P):
    """[1, 2, 4, ...]: the powers of two below P."""
    return [1 << k for k in range(max(P - 1, 0).bit_length())]


def _ring_neighbours(P):
    return [{(i - 1) % P, (i + 1) % P} - {i} for i in range(P)]


def _torus_neighbours(P):
    rows, cols = torus_shape(P)
    out = []
    for i in range(P):
        r, c = divmod(i, cols)
        out.append({((r - 1) % rows) * cols + c, ((r + 1) % rows) * cols + c,
                    r * cols + (c - 1) % cols, r * cols + (c + 1) % cols} - {i})
    return out


def _star_neighbours(P):
    return [set(range(1, P))] + [{0} for _ in range(1, P)]


class Topology:
    """A named topology on P ranks; `matrix(step)` and `peers(rank, step)` (static ones ignore step)."""

    def __init__(self, name, P):
        if name not in TOPOLOGY_NAMES:
            raise UserError(f"gossip.topology must be one of {', '.join(TOPOLOGY_NAMES)}, got {name!r}")
        if P < 1:
            raise UserError(f"gossip needs at least one rank, got {P}")
        self.name, self.P = name, P
        self.dynamic = name == "one_peer_exp" and P > 2
        self._static = None if self.dynamic else self._build(0)
        self._cycle = [self._build(t) for t in range(len(exp2_offsets(P)))] if self.dynamic else None

    def _build(self, step):
        P, name = self.P, self.name
        if name == "ring":
            return metropolis_hastings(_ring_neighbours(P))
        if name == "torus":
            return metropolis_hastings(_torus_neighbours(P))
        if name == "star":
            return metropolis_hastings(_star_neighbours(P))
        if name == "exp2":
            return circulant(P, exp2_offsets(P))
        if name == "one_peer_exp":
            offsets = exp2_offsets(P)
            return circulant(P, [offsets[step % len(offsets)]] if offsets else [])
        return numpy.full((P, P), 1.0 / P)                                   # fully_connected

    def matrix(self, step=0):
        """(P, P) mixing matrix of `step`."""
        return self._cycle[step % len(self._cycle)] if self.dynamic else self._static

    def peers(self, rank, step=0):
        """(W[i, i], [(j, W[i, j]) for the ranks i receives from], [k for the ranks i sends to]) of rank i."""
        W = self.matrix(step)
        inbound = [(j, float(W[rank, j])) for j in range(self.P) if j != rank and W[rank, j] > 0]
        outbound = [k for k in range(self.P) if k != rank and W[k, rank] > 0]
        return float(W[rank, rank]), inbound, outbound

    def degree(self, step=0):
        """The most ranks any rank sends its model to in one step."""
        return max(len(self.peers(i, step)[2]) for i in range(self.P))


def build_topology(name, P):
    return Topology(name, P)


def second_eigenvalue(W):
    """|lambda_2|: the second largest eigenvalue modulus of a mixing matrix (0 for one rank)."""
    if len(W) == 1:
        return 0.0
    moduli = numpy.sort(numpy.abs(numpy.linalg.eigvals(W)))[::-1]
    return float(moduli[1])


def spectral_gap(W):
    """1 - |lambda_2| of a mixing matrix."""
    return 1.0 - second_eigenvalue(W)
