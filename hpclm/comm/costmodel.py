"""The alpha-beta-gamma cost model of each all-reduce algorithm (pure arithmetic, no MPI).

    T = (messages on the critical path) * alpha + (bytes on it) * beta + (bytes reduced) * gamma

alpha: seconds per message, beta: seconds per byte moved, gamma: seconds per byte reduced.
Formulas after Thakur, Rabenseifner & Gropp (2005) and Patarasuk & Yuan (2009), for n bytes
on P ranks, with pof2 = 2^floor(log2 P) and the extra ranks folded in and out (MPICH style):

    ring                2(P-1) a + 2(P-1)/P n b + (P-1)/P n g
    recursive_doubling  log2(pof2) (a + n b + n g)                   + fold
    rabenseifner        2 log2(pof2) a + 2(pof2-1)/pof2 n b + (pof2-1)/pof2 n g + fold
    tree                ceil(log2 P) (2a + 2n b + n g)               (binomial reduce + bcast)
    hierarchical        intra-node tree reduce + ring over nodes + intra-node tree bcast
    fold (P != pof2)    2a + 2n b + n g
    mpi                 the cheaper of recursive_doubling and rabenseifner (MPICH's choice)

Works on paper for any P (e.g. P=1024 with beta = 1/(100e9/8)), including hierarchical with
`ranks_per_node` and separate intra-node alpha/beta.

Cache regimes (optional): beta and gamma may each take a second value, `beta_large` and
`gamma_large`, used when the all-reduce's per-rank working set, 2n bytes (the buffer plus the
equally large receive scratch every algorithm uses), exceeds `cache_bytes`: reductions and
shared-memory copies that stay in the last-level cache run several times faster than those that
stream from DRAM (results/collectives/README.md), and a single gamma cannot cover both. With the extra fields
left None the model is the plain single-beta/single-gamma one (e.g. for paper predictions with
given link parameters). `hpclm bench calibrate` fits all of them; see its docstring.
"""
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hpclm.errors import UserError

MODELED = ("mpi", "ring", "recursive_doubling", "rabenseifner", "tree", "hierarchical")
AUTO_CANDIDATES = ("recursive_doubling", "rabenseifner", "ring", "tree")


@dataclass(frozen=True)
class CostParams:
    alpha: float = 5e-6            # s per message (one Python-driven MPI message, shared memory)
    beta: float = 1 / 4e9          # s per byte moved
    gamma: float = 1 / 4e9         # s per byte reduced
    alpha_intra: float | None = None   # within a node (hierarchical); None = alpha
    beta_intra: float | None = None    # within a node; None = beta
    beta_large: float | None = None    # s per byte moved when 2n > cache_bytes; None = beta
    gamma_large: float | None = None   # s per byte reduced when 2n > cache_bytes; None = gamma
    cache_bytes: float | None = None   # working-set threshold (bytes) between the two regimes

    def _large(self, nbytes):
        return self.cache_bytes is not None and 2 * nbytes > self.cache_bytes

    def beta_at(self, nbytes):
        """beta for an all-reduce of nbytes (per-rank working set 2*nbytes)."""
        return self.beta_large if self.beta_large is not None and self._large(nbytes) else self.beta

    def gamma_at(self, nbytes):
        """gamma for an all-reduce of nbytes (per-rank working set 2*nbytes)."""
        return self.gamma_large if self.gamma_large is not None and self._large(nbytes) else self.gamma

    @property
    def a_in(self):
        return self.alpha if self.alpha_intra is None else self.alpha_intra

    @property
    def b_in(self):
        return self.beta if self.beta_intra is None else self.beta_intra


def _fold(n, P, p):
    pof2 = 1 << (P.bit_length() - 1)
    return 0.0 if pof2 == P else 2 * p.alpha + 2 * n * p.beta + n * p.gamma


def _ring(n, P, p):
    return 2 * (P - 1) * p.alpha + 2 * (P - 1) / P * n * p.beta + (P - 1) / P * n * p.gamma


def _recursive_doubling(n, P, p):
    steps = P.bit_length() - 1
    return steps * (p.alpha + n * p.beta + n * p.gamma) + _fold(n, P, p)


def _rabenseifner(n, P, p):
    pof2 = 1 << (P.bit_length() - 1)
    frac = (pof2 - 1) / pof2
    steps = pof2.bit_length() - 1
    return 2 * steps * p.alpha + 2 * frac * n * p.beta + frac * n * p.gamma + _fold(n, P, p)


def _tree(n, P, p, alpha=None, beta=None):
    a = p.alpha if alpha is None else alpha
    b = p.beta if beta is None else beta
    depth = math.ceil(math.log2(P)) if P > 1 else 0
    return depth * (2 * a + 2 * n * b + n * p.gamma)


def _hierarchical(n, P, p, ranks_per_node):
    L = min(ranks_per_node or P, P)
    if P % L:
        raise UserError(f"costmodel: P={P} is not a multiple of ranks_per_node={L}")
    nodes = P // L
    return _tree(n, L, p, p.a_in, p.b_in) + (_ring(n, nodes, p) if nodes > 1 else 0.0)


def predict(algorithm, nbytes, P, params=None, ranks_per_node=None):
    """Predicted seconds of one all-reduce of `nbytes` bytes on `P` ranks."""
    p = params or CostParams()
    if P < 1 or nbytes < 0:
        raise UserError(f"costmodel: need P >= 1 and nbytes >= 0, got P={P}, nbytes={nbytes}")
    if P == 1 or nbytes == 0:
        return 0.0
    n = float(nbytes)
    # resolve the size-dependent beta/gamma once; the closed forms below see plain numbers
    p = CostParams(alpha=p.alpha, beta=p.beta_at(n), gamma=p.gamma_at(n),
                   alpha_intra=p.alpha_intra, beta_intra=p.beta_intra)
    if algorithm == "ring":
        return _ring(n, P, p)
    if algorithm == "recursive_doubling":
        return _recursive_doubling(n, P, p)
    if algorithm == "rabenseifner":
        return _rabenseifner(n, P, p)
    if algorithm == "tree":
        return _tree(n, P, p)
    if algorithm == "hierarchical":
        return _hierarchical(n, P, p, ranks_per_node)
    if algorithm == "mpi":
        return min(_recursive_doubling(n, P, p), _rabenseifner(n, P, p))
    raise UserError(f"costmodel: no model for {algorithm!r}; modelled: {', '.join(MODELED)}")


def choose(nbytes, P, params=None, candidates=AUTO_CANDIDATES):
    """The candidate algorithm with the smallest predicted time (ties: first in `candidates`)."""
    return min(candidates, key=lambda a: predict(a, nbytes, P, params))


# --- calibration: fitting alpha, beta, gamma to measurements -------------------------------

def fit_alpha_beta(sizes, times):
    """Least-squares fit of t = alpha + n*beta, weighted by 1/t (relative error over all sizes)."""
    rows = [(1.0 / t, n / t) for n, t in zip(sizes, times)]          # each row / t, target 1
    s11 = sum(a * a for a, _ in rows)
    s12 = sum(a * b for a, b in rows)
    s22 = sum(b * b for _, b in rows)
    r1 = sum(a for a, _ in rows)
    r2 = sum(b for _, b in rows)
    det = s11 * s22 - s12 * s12
    if len(rows) < 2 or det <= 0:
        raise UserError("costmodel: need timings at two or more distinct sizes to fit alpha and beta")
    alpha = (r1 * s22 - r2 * s12) / det
    beta = (s11 * r2 - s12 * r1) / det
    return max(alpha, 0.0), max(beta, 0.0)


def fit_gamma(sizes, times):
    """Least-squares slope of t = n*gamma through the origin, weighted by 1/t."""
    num = sum(n / t for n, t in zip(sizes, times))
    den = sum((n / t) ** 2 for n, t in zip(sizes, times))
    if den <= 0:
        raise UserError("costmodel: need reduction timings at a positive size to fit gamma")
    return num / den


def fit_two_slopes(sizes, times, threshold=None):
    """Fit t = x*s_small for x <= threshold and t = x*s_large above (through the origin,
    weighted by 1/t, i.e. relative error). With threshold None, every split between two
    consecutive sorted sizes (and no split) is tried and the one with the least relative squared
    error wins; the threshold is then the geometric mean of the sizes either side of the split
    (inf when there is none). Returns (s_small, s_large, threshold)."""
    pts = sorted(zip(sizes, times))
    if not pts or any(t <= 0 for _, t in pts):
        raise UserError("costmodel: need positive timings to fit a slope")

    def slope(sub):
        num = sum(x / t for x, t in sub)
        den = sum((x / t) ** 2 for x, t in sub)
        return num / den if den > 0 else 0.0

    def sse(sub, s):
        return sum((x * s / t - 1) ** 2 for x, t in sub)

    if threshold is not None:
        lo, hi = [q for q in pts if q[0] <= threshold], [q for q in pts if q[0] > threshold]
        s_lo = slope(lo) if lo else slope(hi)
        s_hi = slope(hi) if hi else s_lo
        return s_lo, s_hi, threshold
    best = None
    for k in range(len(pts), 0, -1):          # k points in the small regime (no split first)
        lo, hi = pts[:k], pts[k:]
        s_lo = slope(lo)
        s_hi = slope(hi) if hi else s_lo
        err = sse(lo, s_lo) + sse(hi, s_hi)
        thr = math.sqrt(pts[k - 1][0] * pts[k][0]) if hi else math.inf
        if best is None or err < best[0] - 1e-12:
            best = (err, s_lo, s_hi, thr)
    return best[1], best[2], best[3]


def save_params(path, params, **meta):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"params": asdict(params), **meta}, indent=2, sort_keys=True) + "\n")


def load_params(path, world_size=None):
    """CostParams from a calibration JSON written by save_params (`hpclm bench calibrate`).

    With `world_size`, a calibration recorded at another rank count is refused: alpha, beta
    and gamma are measured with P ranks sharing the machine and depend on P."""
    try:
        data = json.loads(Path(path).read_text())
        recorded = data.get("world_size")
        if world_size is not None and recorded is not None and recorded != world_size:
            raise UserError(f"calibration {path} was made at P={recorded}, not P={world_size}; "
                            f"run `mpiexec -n {world_size} hpclm bench calibrate`")
        known = {f.name for f in fields(CostParams)}
        return CostParams(**{k: v for k, v in data["params"].items() if k in known})
    except FileNotFoundError:
        raise UserError(f"calibration file not found: {path}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"calibration file {path} is not a calibration: {exc}") from None
