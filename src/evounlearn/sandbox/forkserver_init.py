"""Imported by the multiprocessing fork server (listed in `workers.PRELOAD`): tie its life to the driver.

The fork server already exits when the driver's end of its "alive" pipe closes; PR_SET_PDEATHSIG
makes that immediate even when it is busy. The signal fires when the parent *thread* that
started the fork server exits, so it is only set when the driver started the server from its
main thread: `workers._context` then sets FORKSERVER_FLAG in the environment the server inherits.
Imported anywhere else (the flag is absent) this module does nothing.
"""

from __future__ import annotations

import os

FORKSERVER_FLAG = "EVOUNLEARN_FORKSERVER_PDEATHSIG"

if os.environ.pop(FORKSERVER_FLAG, None) == str(os.getppid()):
    from .confine import set_pdeathsig

    set_pdeathsig()
