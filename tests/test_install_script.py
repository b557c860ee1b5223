"""install.sh chooses where PyTorch comes from: never the CUDA build on a machine without an
NVIDIA GPU unless asked. Run against a stand-in `python` that answers pip's dry runs as a
given machine's sources would, and records every real install it is asked for."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA = ["torch 2.14.1", "nvidia-cublas 13.1.1.3", "triton 3.8.0", "sympy 1.14.0"]
CPU = ["torch 2.13.0+cpu", "sympy 1.14.0"]

# A `python` that knows the sources: the configured ones (DEFAULT; PINNED for a requirement
# pinned with ==), PyTorch's CPU index (CPU_INDEX) and local wheel folders (LOCAL, with
# --no-index); an empty one cannot be reached or offers nothing.
STAND_IN = r'''#!/usr/bin/env bash
log="$STAND_IN_LOG"
if [ "$1" = "-c" ]; then
  case "$2" in
    "import torch") [ -e "$STAND_IN_DIR/torch-installed" ] ; exit $? ;;
    *torch.__version__*) echo "2.13.0+cpu"; exit 0 ;;
    *) exec "$REAL_PYTHON" "$@" ;;
  esac
fi
if [ "$1" = "-m" ] && [ "$2" = "seqmnist" ]; then echo "seqmnist 0.1.0"; exit 0; fi
shift 2  # -m pip
cmd="$1"; shift
if [ "$cmd" = "list" ]; then printf '%s\n' $STAND_IN_LIST; exit 0; fi
dry=0; report=""; source=DEFAULT; args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --report) report="$2"; shift ;;
    --index-url) source=CPU_INDEX; shift ;;
    --no-index) source=LOCAL ;;
    --extra-index-url|--retries|--timeout) shift ;;
    -*) ;;
    *) args+=("$1") ;;
  esac
  shift
done
if [ "$dry" = 1 ]; then
  case "$source:${args[*]}" in DEFAULT:*==*) source=PINNED ;; esac
  offer="$(printenv "$source")"
  [ -n "$offer" ] || exit 1
  "$REAL_PYTHON" - "$report" "$offer" <<'EOF'
import json, sys
items = [dict(metadata=dict(name=p.split(" ")[0], version=p.split(" ")[1]))
         for p in sys.argv[2].split(",")]
json.dump({"install": items}, open(sys.argv[1], "w"))
EOF
  exit 0
fi
echo "install ${args[*]} from $source" >> "$log"
case "${args[*]}" in torch*) touch "$STAND_IN_DIR/torch-installed" ;; esac
'''


def run_install(tmp_path, default, cpu_index="", local="", pinned="", build="cpu",
                extras=None):
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "installs.log"
    env = dict(os.environ, PYTHON=str(python), REAL_PYTHON=sys.executable,
               STAND_IN_LOG=str(log), STAND_IN_DIR=str(tmp_path), STAND_IN_LIST="",
               DEFAULT=",".join(default), CPU_INDEX=",".join(cpu_index),
               LOCAL=",".join(local), PINNED=",".join(pinned), SEQMNIST_TORCH=build)
    done = subprocess.run(["sh", str(ROOT / "install.sh"), *([extras] if extras else [])], env=env,
                          capture_output=True, text=True, timeout=60)
    installs = log.read_text().splitlines() if log.exists() else []
    return done, installs


@pytest.fixture(autouse=True)
def _bash():
    if not Path("/bin/bash").exists() and not Path("/usr/bin/bash").exists():
        pytest.skip("the stand-in python is a bash script")


def test_where_the_configured_sources_offer_a_cpu_build_it_is_installed_from_them(tmp_path):
    done, installs = run_install(tmp_path, default=CPU)
    assert done.returncode == 0, done.stderr
    assert installs == ["install torch>=2.1 from DEFAULT", "install .[digits,web,explain] from DEFAULT"]


def test_where_they_offer_only_the_cuda_build_the_cpu_index_is_used(tmp_path):
    done, installs = run_install(tmp_path, default=CUDA, cpu_index=CPU)
    assert done.returncode == 0, done.stderr
    assert installs[0] == "install torch>=2.1 from CPU_INDEX"


def test_a_cpu_index_whose_answer_still_brings_cuda_is_not_used(tmp_path):
    """pip's configured extra indexes apply beside --index-url: found on a machine whose pip
    config named a mirror, where the CPU index could not be reached and the mirror's CUDA
    build came in through it (5.9 GB). What each source would install is checked."""
    done, installs = run_install(tmp_path, default=CUDA, cpu_index=CUDA)
    assert done.returncode == 1 and installs == []


def test_a_cpu_wheel_in_a_local_folder_is_used_when_the_cpu_index_cannot_be_reached(tmp_path):
    # unpinned, the configured sources offer the CUDA build; pinned to the local wheel's
    # version they resolve to that wheel, with no NVIDIA package
    done, installs = run_install(tmp_path, default=CUDA, local=["torch 2.13.0+cpu"],
                                 pinned=CPU)
    assert done.returncode == 0, done.stderr
    assert installs[0] == "install torch==2.13.0+cpu from DEFAULT"


def test_a_local_wheel_whose_pin_still_brings_cuda_is_refused(tmp_path):
    done, installs = run_install(tmp_path, default=CUDA, local=["torch 2.14.1"], pinned=CUDA)
    assert done.returncode == 1 and installs == []


def test_with_no_cpu_build_reachable_it_stops_without_installing_cuda(tmp_path):
    done, installs = run_install(tmp_path, default=CUDA)
    assert done.returncode == 1
    assert installs == []  # nothing installed at all: no CUDA build, no half-done environment
    assert "no CPU build of PyTorch is reachable" in done.stderr
    assert "SEQMNIST_TORCH=cuda" in done.stderr


def test_the_cuda_build_where_asked(tmp_path):
    done, installs = run_install(tmp_path, default=CUDA, build="cuda", extras="test")
    assert done.returncode == 0, done.stderr
    assert installs == ["install torch>=2.1 from DEFAULT", "install .[test] from DEFAULT"]


def test_an_installed_pytorch_is_kept(tmp_path):
    (tmp_path / "torch-installed").touch()
    done, installs = run_install(tmp_path, default=CUDA)
    assert done.returncode == 0, done.stderr
    assert installs == ["install .[digits,web,explain] from DEFAULT"]
