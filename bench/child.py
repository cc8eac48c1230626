"""Bench work in a child process: `python -m MODULE JOB_JSON`, its answer the last line of its stdout.

Each backend, and the ceiling probe, runs in its own process so that one's threads, allocator and
environment never colour another's figures. What the child writes to stderr is its progress: passed
on line by line as it comes (`log`), and its last line is the error when the child fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading


def run_child(module: str, job: dict, timeout: float, env: dict | None = None, log=None) -> dict:
    """The child's JSON answer, or {"error": its last stderr line} when it failed (or ran past timeout)."""
    err: list[str] = []
    with subprocess.Popen([sys.executable, "-m", module, json.dumps(job)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as p:

        def relay() -> None:
            for line in p.stderr:
                err.append(line.rstrip("\n"))
                if log is not None and line.strip():
                    log(line.rstrip("\n"))

        reader = threading.Thread(target=relay, daemon=True)
        killer = threading.Timer(timeout, p.kill)
        reader.start()
        killer.start()
        try:
            out = p.stdout.read()
            p.wait()
        finally:
            killer.cancel()
            reader.join()
    if p.returncode != 0:
        last = ([line for line in err if line.strip()] or ["no output"])[-1]
        return {"error": last[:300] if p.returncode != -9 else f"{module} ran over {timeout:.0f} s and was stopped"}
    return json.loads(out.strip().splitlines()[-1])
