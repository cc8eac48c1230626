"""`python -m lstmgen` runs the same command as the `lstmgen` script."""

import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A data-parallel worker started by torchrun (`lstmgen train --nproc N`). Its files are already
    # written and fsynced, and its process group destroyed. Leave without interpreter finalization:
    # a gloo worker thread that drops the last reference to a collective's tensor while Python is
    # shutting down aborts the process (SIGABRT; pytorch/pytorch#190489), which fails a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
