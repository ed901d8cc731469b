"""Pure rank arithmetic of a dp x tp x pp world (no MPI): who is in which group, who is next.

Tensor-parallel ranks are adjacent, then data-parallel, then pipeline stages (as in Megatron):

    rank = pp_idx * (dp * tp) + dp_idx * tp + tp_idx

so a tensor-parallel group (the chattiest) stays inside a node whenever tp divides the
ranks per node. Every group is a list of world ranks ordered by its own index, which is the
order `Comm.Split` keys them in (see hpclm.comm.groups).
"""
from dataclasses import dataclass

from hpclm.errors import UserError

KINDS = ("dp", "tp", "pp")


@dataclass(frozen=True)
class Layout:
    world_size: int
    dp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self):
        for name in ("world_size", "dp", "tp", "pp"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"layout: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.dp * self.tp * self.pp != self.world_size:
            raise UserError(
                f"layout: world size {self.world_size} != dp*tp*pp = {self.dp}*{self.tp}*{self.pp} "
                f"= {self.dp * self.tp * self.pp}; launch {self.dp * self.tp * self.pp} ranks or change dp/tp/pp")

    def coords(self, rank):
        """(pp_idx, dp_idx, tp_idx) of a world rank."""
        self._check(rank)
        pp_idx, rest = divmod(rank, self.dp * self.tp)
        dp_idx, tp_idx = divmod(rest, self.tp)
        return pp_idx, dp_idx, tp_idx

    def rank_of(self, pp_idx, dp_idx, tp_idx):
        return pp_idx * (self.dp * self.tp) + dp_idx * self.tp + tp_idx

    def group(self, kind, rank):
        """World ranks of the `kind` group ("dp", "tp" or "pp") that holds `rank`, in group order."""
        pp_idx, dp_idx, tp_idx = self.coords(rank)
        if kind == "tp":
            return [self.rank_of(pp_idx, dp_idx, t) for t in range(self.tp)]
        if kind == "dp":
            return [self.rank_of(pp_idx, d, tp_idx) for d in range(self.dp)]
        if kind == "pp":
            return [self.rank_of(p, dp_idx, tp_idx) for p in range(self.pp)]
        raise UserError(f"layout: unknown group kind {kind!r}; choose one of {', '.join(KINDS)}")

    def groups(self, kind):
        """Every `kind` group of the world, ordered by the smallest rank in it."""
        seen, out = set(), []
        for rank in range(self.world_size):
            members = self.group(kind, rank)
            if members[0] not in seen:
                seen.add(members[0])
                out.append(members)
        return out

    def split_args(self, kind, rank):
        """(color, key) for `Comm.Split` so that the new communicator is `group(kind, rank)`."""
        members = self.group(kind, rank)
        return members[0], members.index(rank)

    def pipeline_neighbours(self, rank):
        """(previous stage's rank or None, next stage's rank or None) in this rank's pipeline."""
        members = self.group("pp", rank)
        i = members.index(rank)
        return (members[i - 1] if i > 0 else None, members[i + 1] if i + 1 < len(members) else None)

    def ring_neighbours(self, kind, rank):
        """(left, right) of `rank` in the ring formed by its `kind` group (itself for a group of one)."""
        return ring_neighbours(self.group(kind, rank), rank)

    def _check(self, rank):
        if not 0 <= rank < self.world_size:
            raise UserError(f"layout: rank {rank} outside a world of {self.world_size}")


def ring_neighbours(members, rank):
    """(left, right) of `rank` in the ring `members` (a list of ranks)."""
    i = members.index(rank)
    return members[(i - 1) % len(members)], members[(i + 1) % len(members)]


def split_counts(n, parts):
    """Element counts of `n` items cut into `parts` nearly equal blocks (the first n % parts get one more)."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def offsets(counts):
    """Start offsets of consecutive blocks with these counts, plus the total at the end."""
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out
