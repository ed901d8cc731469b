"""Node-local and node-leader sub-communicators of a communicator, made once and cached on it.

The node-local group comes from `Split_type(COMM_TYPE_SHARED)`. To study the hierarchical
algorithm on one machine, `HPCLM_RANKS_PER_NODE=k` pretends consecutive blocks of k ranks are
nodes. The pair is stored as an MPI attribute of the parent communicator, and freed with it.
"""
import os

from mpi4py import MPI


def _free_pair(comm, keyval, pair):
    for sub in pair:
        if sub is not None and sub != MPI.COMM_NULL and not MPI.Is_finalized():
            sub.Free()


_KEYVAL = MPI.Comm.Create_keyval(delete_fn=_free_pair)


def split_nodes(comm):
    """(node_comm, leader_comm or None): leader_comm joins node-local rank 0 of every node."""
    pair = comm.Get_attr(_KEYVAL)
    if pair is None:
        fake = int(os.environ.get("HPCLM_RANKS_PER_NODE", "0"))
        rank = comm.Get_rank()
        if fake > 0:
            node = comm.Split(rank // fake, rank)
        else:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        is_leader = node.Get_rank() == 0
        leaders = comm.Split(0 if is_leader else MPI.UNDEFINED, rank)
        pair = (node, leaders if is_leader else None)
        comm.Set_attr(_KEYVAL, pair)
    return pair
