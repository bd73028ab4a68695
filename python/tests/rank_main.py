"""The entry of a rank worker script (test_engines_*_rank.py): runs main(argv) and
exits with its status; an exception prints its traceback and a FAILED line naming
the rank (argv[2]), the seed (argv[4]) and the pid, which the parent test reports."""
from __future__ import annotations

import os
import sys
import traceback


def run(main) -> None:
    try:
        rc = main(sys.argv)
    except Exception:
        traceback.print_exc()
        print(f"FAILED rank {sys.argv[2] if len(sys.argv) > 2 else '?'} seed "
              f"{sys.argv[4] if len(sys.argv) > 4 else '?'} (pid {os.getpid()})", flush=True)
        sys.exit(1)
    sys.exit(rc)
