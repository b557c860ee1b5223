"""Facts about this machine and this software, for run provenance and ``seqmnist doctor``.

Everything here is read, never guessed: the CPU model and flags from /proc/cpuinfo (or the
platform module elsewhere), versions from the installed packages.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from functools import cache

from .._version import __version__

# The CPU features that decide which kernels run (shown by doctor and stored with every run).
FEATURES = ("avx2", "fma", "avx512f", "avx512dq", "avx512_bf16", "amx_bf16", "amx_tile",
            "asimd", "sve")


@cache
def cpu() -> dict:
    """{"model": str, "features": [the FEATURES this CPU has], "cores": int}."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.processor(), platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return dict(model=model, features=[f for f in FEATURES if f in flags],
                cores=os.cpu_count() or 1)


def versions() -> dict:
    """seqmnist, PyTorch, Python, NumPy and the OS."""
    import numpy
    import torch


    return dict(seqmnist=__version__, torch=torch.__version__, numpy=numpy.__version__,
                python=platform.python_version(), os=f"{platform.system()} {platform.release()}",
                machine=platform.machine(), executable=sys.executable)


def gpu() -> str | None:
    """The CUDA GPU's name, or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def environment() -> dict:
    """Versions, CPU and GPU: what every run records about where it ran."""
    return dict(**versions(), cpu=cpu()["model"], cpu_features=cpu()["features"],
                cpu_cores=cpu()["cores"], gpu=gpu())


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 * 2**20


@cache
def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks of up to 32 MiB for reuse instead of giving
    each back to the system: PyTorch frees and allocates activation-sized tensors many times a
    training step, and with glibc's defaults many of them are mapped afresh or trimmed away, so a
    step page-faults its activations in again (18,000-22,000 faults and 34-49 ms of sys time per
    S4D step at 784 steps measured, a few hundred faults at most with this; BENCHMARKS.md
    section 19). Changes no number a model computes. Returns
    whether it took effect (False off glibc, where nothing is changed)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, 2**30))
