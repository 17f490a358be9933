"""`python -m worker.orphan_guard CMD...`: run CMD so that it dies with us.

Sets the Linux parent-death signal (SIGKILL) and then becomes CMD (exec), so
the training dies when its worker is killed, even by SIGKILL, instead of
training on unsupervised while the run is recovered elsewhere. The signal
survives exec; torchrun's ranks set it again for themselves (worker.child).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel for SIGKILL when our parent exits (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        return


def main(argv: list[str]) -> None:
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the signal was set
        sys.exit(1)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
