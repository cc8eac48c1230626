"""Fault injection for crash tests: pause at named points inside atomic writes.

`LSTMGEN_FAULT_PAUSE=checkpoint-write:2` makes every checkpoint write sleep 2 seconds between
writing its temporary file and renaming it, so that a test can SIGKILL a real process right there.
Unset (always, outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time


def pause(point: str) -> None:
    spec = os.environ.get("LSTMGEN_FAULT_PAUSE")
    if not spec:
        return
    for item in spec.split(","):
        name, _, seconds = item.partition(":")
        if name == point:
            time.sleep(float(seconds or 1))
