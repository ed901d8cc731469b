"""The communicators of a dp x tp x pp run, built once with `Comm.Split` and passed explicitly.

    groups = Groups.build(MPI.COMM_WORLD, tp=2, pp=1)     # dp = world / (tp * pp)
    comm.allreduce(groups.dp, grads)                      # data-parallel gradient all-reduce
    groups.free()

Who is in which group is decided by hpclm.comm.layout (pure, tested without MPI).
"""
from dataclasses import dataclass

from mpi4py import MPI

from hpclm.comm.layout import Layout
from hpclm.errors import UserError


@dataclass
class Groups:
    world: MPI.Comm
    dp: MPI.Comm
    tp: MPI.Comm
    pp: MPI.Comm
    node: MPI.Comm        # ranks sharing this node's memory (Split_type COMM_TYPE_SHARED)
    layout: Layout

    @classmethod
    def build(cls, world, dp=None, tp=1, pp=1):
        """Split `world` into groups; dp defaults to world size / (tp * pp). Collective on world."""
        size, rank = world.Get_size(), world.Get_rank()
        if dp is None:
            if tp < 1 or pp < 1 or size % (tp * pp):
                err = UserError(f"layout: world size {size} is not divisible by tp*pp = {tp}*{pp}")
                err.collective = True
                raise err
            dp = size // (tp * pp)
        try:
            layout = Layout(size, dp, tp, pp)
        except UserError as err:
            err.collective = True     # every rank raises the same, so rank 0 reports it once
            raise
        split = {kind: world.Split(*layout.split_args(kind, rank)) for kind in ("dp", "tp", "pp")}
        node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        for name, comm in (*split.items(), ("node", node)):
            comm.Set_name(name)              # bytes are counted per group name (hpclm.comm.counters)
        return cls(world, split["dp"], split["tp"], split["pp"], node, layout)

    def free(self):
        """Free the communicators this value made (not world)."""
        for comm in (self.dp, self.tp, self.pp, self.node):
            if comm != MPI.COMM_NULL:
                comm.Free()
        self.dp = self.tp = self.pp = self.node = MPI.COMM_NULL
