"""One line describing the machine a benchmark ran on (CPU model, cores, versions, device, load)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_info(device: torch.device) -> str:
    """CPU model, core count, torch/torchvision versions, torch threads, the device and the load average."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    try:
        import torchvision

        vision = f", torchvision {torchvision.__version__}"
    except ImportError:  # pragma: no cover - torchvision is a dependency
        vision = ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}{vision}, "
        f"torch threads {torch.get_num_threads()}, device {dev}, load average {load:.2f}"
    )
