"""What a measurement ran on: the CPU's name and instruction set (benchmark reports record both:
oneDNN picks its kernels, and its bugs, by ISA; see ``amc.cpuconv``)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return name


def machine_info() -> dict[str, str | int]:
    """Plain keys for a report's JSON: ``cpu``, ``cpu_capability`` (e.g. AVX2, AVX512), ``torch``, ``threads``."""
    return {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
