"""Fault injection for crash tests: pause at, or SIGKILL the process at, named points.

Points: `checkpoint-write` and `export-write` (between writing a temporary file and renaming it
into place) and `train-step` (after each optimizer step).

- `LSTMGEN_FAULT_PAUSE=checkpoint-write:2` sleeps 2 seconds at every such point.
- `LSTMGEN_FAULT_KILL=train-step@37` makes the process SIGKILL itself the 37th time it reaches the
  point (`@N` left out: the first time). The kill lands at an exact step or write, however fast or
  slow the machine is, so crash tests never race the process they kill.

Unset (always, outside tests) each call costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time

_reached: dict[str, int] = {}


def pause(point: str) -> None:
    """Pause (LSTMGEN_FAULT_PAUSE) or die (LSTMGEN_FAULT_KILL) if a test asked for it at `point`."""
    spec = os.environ.get("LSTMGEN_FAULT_PAUSE")
    if spec:
        for item in spec.split(","):
            name, _, seconds = item.partition(":")
            if name == point:
                time.sleep(float(seconds or 1))
    if os.environ.get("LSTMGEN_FAULT_KILL"):
        _kill_if_due(point)


def _kill_if_due(point: str) -> None:
    _reached[point] = _reached.get(point, 0) + 1
    for item in os.environ["LSTMGEN_FAULT_KILL"].split(","):
        name, _, nth = item.partition("@")
        if name == point and _reached[point] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
