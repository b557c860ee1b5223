#!/bin/sh
# Install seqmnist into the active Python environment, with the PyTorch build that suits this
# machine: the CUDA build only where an NVIDIA GPU is present, the CPU build (about 200 MB
# downloaded, no NVIDIA libraries) everywhere else.
#
#   ./install.sh                 # seqmnist with the extras of the README's commands (digits,web,explain)
#   ./install.sh test,browser    # what the test suite needs
#
# Where the CPU build comes from, first that works: a PyTorch already installed (kept as it is);
# the sources pip is configured with, when what they offer needs no NVIDIA package; PyTorch's
# CPU index (https://download.pytorch.org/whl/cpu); a CPU wheel in a folder pip is told to look
# in (find-links). If none is reachable it stops and says so: it never installs the CUDA build
# on a machine without an NVIDIA GPU unless asked (SEQMNIST_TORCH=cuda).
#   SEQMNIST_TORCH=cpu|cuda      choose the build instead of detecting the GPU
#   SEQMNIST_TORCH_SPEC=...      the requirement to install (default: torch>=2.1)
set -eu
cd "$(dirname "$0")"

extras="${1:-digits,web,explain}"
spec="${SEQMNIST_TORCH_SPEC:-torch>=2.1}"
cpu_index="https://download.pytorch.org/whl/cpu"
python="${PYTHON:-python}"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT

say() { printf 'install.sh: %s\n' "$*" >&2; }

# Which packages a pip install would bring (a dry run, nothing downloaded but metadata), one per
# line; fails when pip cannot resolve it from the sources given.
would_install() {
  "$python" -m pip install --dry-run --ignore-installed --quiet --report "$report" "$@" \
    >/dev/null 2>&1 || return 1
  "$python" -c 'import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(item["metadata"]["name"].lower(), item["metadata"]["version"])' "$report"
}

# The NVIDIA libraries a list of packages holds (the CUDA build's dependencies).
nvidia_in() { grep -E '^(nvidia-|cuda-|triton )' || true; }

# Install with these pip arguments if what they would install needs no NVIDIA package; else (or
# when pip cannot resolve them) install nothing and fail.
from_source() {
  found="$(would_install "$@")" || return 1
  [ -z "$(printf '%s\n' "$found" | nvidia_in)" ] || return 1
  "$python" -m pip install "$@"
}

has_nvidia_gpu() {
  [ -e /proc/driver/nvidia/version ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
}

install_torch() {
  if "$python" -c 'import torch' >/dev/null 2>&1; then
    say "keeping the PyTorch already installed ($("$python" -c 'import torch; print(torch.__version__)'))"
    return 0
  fi
  build="${SEQMNIST_TORCH:-}"
  if [ -z "$build" ]; then
    if has_nvidia_gpu; then build=cuda; else build=cpu; fi
  fi
  case "$build" in
    cuda)
      say "an NVIDIA GPU is here (or SEQMNIST_TORCH=cuda): installing PyTorch's CUDA build (several GB)"
      "$python" -m pip install "$spec"
      return 0 ;;
    cpu) ;;
    *) say "SEQMNIST_TORCH must be cpu or cuda, not '$build'"; exit 2 ;;
  esac
  say "no NVIDIA GPU here: installing PyTorch's CPU build (no CUDA libraries)"
  # 1. the configured sources; 2. PyTorch's CPU index (pip's configured extra indexes still
  # apply beside it, so what it would install is checked too)
  if from_source "$spec" || from_source --index-url "$cpu_index" --retries 1 --timeout 15 "$spec"; then
    return 0
  fi
  # 3. a CPU wheel in a folder pip looks in (find-links), with its dependencies from the index
  if local_torch="$(would_install --no-index --no-deps "$spec" | grep '^torch ')"; then
    from_source "torch==${local_torch#torch }" && return 0
  fi
  say "no CPU build of PyTorch is reachable from here: the sources pip is configured with offer"
  say "only the CUDA build (about 3 GB of downloads, 2 GB of them NVIDIA libraries), and"
  say "$cpu_index cannot be reached. Either download a CPU wheel for this Python"
  say "($("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")'), linux x86_64) from that index on another machine and"
  say "  pip install ./torch-*.whl && ./install.sh $extras"
  say "or accept the CUDA build anyway: SEQMNIST_TORCH=cuda ./install.sh $extras"
  exit 1
}

install_torch
"$python" -m pip install -e ".[$extras]"
if ! has_nvidia_gpu && "$python" -m pip list 2>/dev/null | grep -qiE '^nvidia-'; then
  say "warning: NVIDIA packages are installed in this environment although no NVIDIA GPU is here"
fi
say "done: $("$python" -m seqmnist --version 2>/dev/null || echo seqmnist), PyTorch $("$python" -c 'import torch; print(torch.__version__)')"
