"""Bench work in a child process: `python -m MODULE JOB_JSON`, its answer the last line of its stdout.

Each backend, and the ceiling probe, runs in its own process so that one's threads, allocator and
environment never colour another's figures.
"""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(module: str, job: dict, timeout: float, env: dict | None = None) -> dict:
    """The child's JSON answer, or {"error": its last stderr line} when it failed."""
    r = subprocess.run([sys.executable, "-m", module, json.dumps(job)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])
