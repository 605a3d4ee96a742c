"""A server that dies with the thread that started it (a Ray replica's keeper).

The starter sets ``INFERLINE_DIE_WITH_PARENT`` to its pid in the child's environment; the child sets
PR_SET_PDEATHSIG=SIGKILL on itself first thing, then checks that its parent is still that pid (had the
parent died between the exec and the prctl, the child would already belong to another process, and
exits). The child does this itself, after exec, rather than in a `preexec_fn`: a `preexec_fn` makes
Python fork instead of vfork, and a fork runs grpcio's at-fork handlers in the child, whose restarted
pollers can fail on the descriptors `close_fds` shuts and abort the process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from ..errors import InvalidArgument

ENV = "INFERLINE_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1


def die_with_parent_from_env() -> None:
    """Arms the death signal where ENV asks for it; exits at once if that parent is already gone."""
    wanted = os.environ.pop(ENV, None)  # not passed on: whatever this server starts has another parent
    if not wanted:
        return
    if not wanted.isdigit() or int(wanted) < 1:
        raise InvalidArgument(f"{ENV}={wanted!r}: the pid of the process that started this server, a positive integer")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if os.getppid() != int(wanted):  # reparented: that parent died before the prctl
        print(f"inferline: the process that started this server ({wanted}) is gone; exiting", file=sys.stderr,
              flush=True)
        sys.exit(1)
