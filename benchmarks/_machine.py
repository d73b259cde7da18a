"""What a benchmark ran on: seconds mean little without the CPU (shared by the scripts here)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``"unknown CPU"`` where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def describe() -> str:
    """``"x86_64, <CPU model>, <n> cores"``."""
    return f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores"
