"""Facts about this machine and this software, for run provenance and ``seqmnist doctor``.

Everything here is read, never guessed: the CPU model and flags from /proc/cpuinfo (or the
platform module elsewhere), versions from the installed packages.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache

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

    from ._version import __version__

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
