"""benchmarks/gpu.py, the script a GPU machine runs once: here on CPU at tiny sizes, so that the
day a GPU is lent it runs to the end and writes its table."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from seqmnist.models.registry import MODELS

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu.py"


def test_the_gpu_script_runs_every_check_and_measure_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "gpu-cpu-tiny.json").read_text())
    rows = record["rows"]
    checked = {(r["model"], r["view"]) for r in rows if r.get("check") == "model"}
    assert checked == {(m, v) for m, e in MODELS.items() for v in e.views}
    assert all(r["ok"] for r in rows if r.get("check"))
    explained = {r["model"] for r in rows if r.get("check") == "explainer"}
    assert explained == {m for m, e in MODELS.items() if e.steps}
    measures = {r["measure"] for r in rows if "measure" in r}
    assert measures == {"tutorial epoch", "step at 784", "budget run (permuted)"}
    assert "| budget run" not in proc.stdout and "s budget, permuted |" in proc.stdout


def test_asking_for_cuda_without_a_gpu_says_so(tmp_path):
    if torch.cuda.is_available():
        return  # on a GPU machine there is nothing to refuse
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU here" in proc.stderr
    assert not list(tmp_path.iterdir())
