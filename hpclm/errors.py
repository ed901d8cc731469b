"""The one exception type for bad user input (one clear line, exit code 2), and the helper that
makes sure an error report has left the process before the job is torn down."""
import fcntl
import os
import stat
import struct
import sys
import termios
import time


class UserError(Exception):
    """Bad input (config, data file, checkpoint, layout). The CLI prints the message, no traceback."""


DRAIN_TIMEOUT_S = 2.0
DRAIN_GRACE_S = 0.1


def drain_stderr(timeout=DRAIN_TIMEOUT_S):
    """Flush stderr and, when it is a pipe (as under mpiexec), wait until its reader has taken every
    byte (at most `timeout` seconds), then a short grace for the reader to pass them on. MPI_Abort
    right after a write otherwise races the launcher's output forwarding and can lose the report."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    try:
        if not stat.S_ISFIFO(os.fstat(2).st_mode):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            unread = struct.unpack("i", fcntl.ioctl(2, termios.FIONREAD, b"\0\0\0\0"))[0]
            if unread == 0:
                break
            time.sleep(0.005)
    except OSError:
        return
    time.sleep(DRAIN_GRACE_S)
