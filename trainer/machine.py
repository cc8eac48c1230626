"""What machine a figure came from: one description shared by the trainer's manifests and the bench."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) ..."), or the best the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(accelerator: str | None = None) -> str:
    """One line: CPU, cores, accelerator if one was used, Python version."""
    gpu = f", {accelerator}" if accelerator else ""
    return f"{cpu_name()}, {os.cpu_count()} cpus{gpu}, {platform.system()}, python {platform.python_version()}"
