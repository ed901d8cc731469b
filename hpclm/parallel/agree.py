"""Make every rank fail together: a setup step that raises UserError on any rank raises on all.

Without this, one rank with a bad file exits while the others wait in the next collective
forever. With it, every rank raises the same UserError (marked collective, so the CLI prints
it once, from rank 0) and the job exits non-zero.
"""
from hpclm.errors import UserError


def collective_error(message):
    err = UserError(message)
    err.collective = True
    return err


def collectively(comm, fn, *args, **kwargs):
    """fn(*args, **kwargs) on every rank of `comm`; a UserError anywhere becomes one on every rank."""
    try:
        result, message = fn(*args, **kwargs), None
    except UserError as exc:
        result, message = None, str(exc)
    messages = [message] if comm is None else comm.allgather(message)
    failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    if failed:
        rank, first = failed[0]
        same = all(m == first for _, m in failed)
        where = "" if len(failed) == len(messages) and same else f" (on rank {rank}{' and others' if len(failed) > 1 else ''})"
        raise collective_error(first + where)
    return result
