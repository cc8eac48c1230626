"""The documented import path of `lstmgen inspect`'s Python API (`from lstmgen.inspect import inspect_text`).

The code lives in the lstmgen.inspection package; this module only re-exports it, so that scripts
written against the documented path keep working. Nothing inside lstmgen imports it.
"""

from .inspection import *  # noqa: F401,F403
from .inspection import __all__  # noqa: F401
