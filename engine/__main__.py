"""`python -m lstmgen` runs the same command as the `lstmgen` script."""

import sys

from .cli import main

sys.exit(main())
