"""Non-blocking collectives: start now, compute, `wait()` later.

    req = comm.iallreduce(c, grads, algorithm="ring")   # returns at once
    ...backward of the next layer...                      # NumPy releases the GIL in BLAS/ufuncs
    req.wait()                                            # result in grads

How progress is made: MPI (MPICH without async progress) moves data only inside MPI calls, and
our algorithms are Python loops of point-to-point steps, so a started collective must be driven
by someone while the caller computes. Each process has one daemon *communication thread* that
runs started collectives one after another, in the order they were started (the same order on
every rank, as MPI requires for collectives). The thread works on a private duplicate of the
caller's communicator (made once, in the caller's thread, cached as an MPI attribute), so its
messages can never match the caller's own traffic. Python threads share one interpreter lock,
but MPI calls (mpi4py) and NumPy's large ufunc/BLAS kernels release it, so the thread's
transfers and reductions run alongside the caller's matrix products.

This needs MPI_THREAD_MULTIPLE (mpi4py asks for it by default; the MPICH wheel grants it).
A blocked MPI call spins; on oversubscribed cores set MPIR_CVAR_ENABLE_HEAVY_YIELD=1 (see
hpclm/comm/README.md) so the spinning thread gives the core to the computing one.
"""
import queue
import threading

from mpi4py import MPI

from hpclm.comm.allreduce import allreduce
from hpclm.comm.blocks import allgather, reduce_scatter
from hpclm.errors import UserError


class Request:
    """A started collective. `wait()` returns its result (re-raising any error); `test()` polls."""

    def __init__(self):
        self._done = threading.Event()
        self._result = self._error = None

    def _finish(self, result=None, error=None):
        self._result, self._error = result, error
        self._done.set()

    def test(self):
        return self._done.is_set()

    def wait(self, timeout=None):
        if not self._done.wait(timeout):
            raise TimeoutError("collective did not finish in time")
        if self._error is not None:
            raise self._error
        return self._result


def _serve(jobs):
    while True:
        fn, args, kwargs, req = jobs.get()
        try:
            req._finish(result=fn(*args, **kwargs))
        except BaseException as exc:  # handed to the waiter, who re-raises it
            req._finish(error=exc)


_worker = {"jobs": None}
_lock = threading.Lock()
_SHADOW = MPI.Comm.Create_keyval(delete_fn=lambda comm, key, shadow: None if MPI.Is_finalized() else shadow.Free())


def _jobs():
    with _lock:
        if _worker["jobs"] is None:
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                raise UserError("non-blocking collectives need MPI_THREAD_MULTIPLE; do not lower "
                                "mpi4py.rc.thread_level, or use an MPI library that provides it")
            _worker["jobs"] = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(_worker["jobs"],), name="hpclm-comm", daemon=True).start()
        return _worker["jobs"]


def shadow(comm):
    """The private duplicate of `comm` the communication thread uses (collective on first use)."""
    dup = comm.Get_attr(_SHADOW)
    if dup is None:
        dup = comm.Dup()
        dup.Set_name(comm.Get_name())        # its bytes count under the caller's group
        comm.Set_attr(_SHADOW, dup)
    return dup


def start(fn, comm, *args, **kwargs):
    """Run the collective `fn(shadow(comm), *args, **kwargs)` on the communication thread."""
    jobs = _jobs()
    req = Request()
    jobs.put((fn, (shadow(comm),) + args, kwargs, req))
    return req


def iallreduce(comm, sendbuf, recvbuf=None, op="sum", algorithm="ring"):
    """Non-blocking `allreduce`; do not touch the buffers until `wait()` returns."""
    return start(allreduce, comm, sendbuf, recvbuf, op=op, algorithm=algorithm)


def ireduce_scatter(comm, sendbuf, recvbuf=None, op="sum", algorithm="ring", counts=None):
    return start(reduce_scatter, comm, sendbuf, recvbuf, op=op, algorithm=algorithm, counts=counts)


def iallgather(comm, sendbuf, recvbuf=None, algorithm="ring", counts=None):
    return start(allgather, comm, sendbuf, recvbuf, algorithm=algorithm, counts=counts)
