"""Shared helpers of the benchmarks: compute dtypes by name, device synchronisation and the process's peak memory.

On CPU a benchmark's peak memory is the rise of the process's resident memory during the timed runs (Linux
``VmHWM`` after resetting it through ``/proc/self/clear_refs``); on CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rss_peak_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_kb(key: str) -> float | None:
    """A field of ``/proc/self/status`` in kB (``VmRSS``, ``VmHWM``); None where unreadable or absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer measures it; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
