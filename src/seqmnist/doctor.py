"""``seqmnist doctor``: what this machine runs, so a user (or a bug report) can see it at once."""

from __future__ import annotations

import torch

from .core import system
from .data.views import get_view
from .kernels import lstm_kernel
from .kernels.backends import kernel_disabled, native_problem, resolve_backend
from .models.registry import create_model, get_entry, list_models


def report() -> tuple[dict, str]:
    """(facts as a dict, the same as text)."""
    env = system.environment()
    ok, why = lstm_kernel.status()
    kernel = dict(library=str(lstm_kernel.LIBRARY), built=lstm_kernel.LIBRARY.is_file(),
                  runs_here=ok, instruction_set=why if ok else None, problem=None if ok else why,
                  disabled_by_environment=kernel_disabled())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    picks = {}
    for name in list_models():
        entry = get_entry(name)
        shape = get_view(entry.defaults["view"]).shape(28, 28)
        try:
            model = create_model(name, shape, 10)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be built is reported
            picks[name] = dict(backend=None, why=f"cannot build: {exc}")
            continue
        chosen = resolve_backend("auto", model, device, "fp32")
        picks[name] = dict(backend=chosen, why=None if chosen == "native" else
                           native_problem(model, device, "fp32"))
    info = dict(**env, threads=torch.get_num_threads(), cuda=torch.cuda.is_available(),
                lstm_kernel=kernel, auto_backend=picks)
    lines = [
        f"seqmnist {env['seqmnist']}  (PyTorch {env['torch']}, NumPy {env['numpy']}, "
        f"Python {env['python']}, {env['os']} {env['machine']})",
        f"CPU:       {env['cpu']} ({env['cpu_cores']} cores, PyTorch uses {info['threads']} "
        "threads)",
        f"features:  {', '.join(env['cpu_features']) or 'none of ' + ', '.join(system.FEATURES)}",
        f"GPU:       {env['gpu'] or 'none (PyTorch sees no CUDA device)'}",
        f"LSTM kernel: {'available, ' + why if ok else 'not available: ' + why}"
        f"{' (turned off by SEQMNIST_LSTM_KERNEL=0)' if kernel_disabled() else ''}",
        f"             {lstm_kernel.LIBRARY}",
        "backend auto picks (fp32, " + device + "):",
    ]
    for name, pick in picks.items():
        lines.append(f"  {name:<12} {pick['backend']}" + (f"  ({pick['why']})" if pick["why"]
                                                          else ""))
    return info, "\n".join(lines)
