"""Mutation check of the training core: make one small change to the code at a time (delete a
statement, flip a comparison, swap True and False), run the tests that cover that file, and list
the changes no test noticed ("survivors"). Not part of CI: it runs the tests once per mutant.

    python tools/mutants.py                       # every mutant of every target (slow)
    python tools/mutants.py --files training/trainer.py --max 40 --seed 1
    python tools/mutants.py --out docs/mutants.md

Each survivor is either a missing test (write it) or a change that cannot matter (say why in the
output's notes). The source file is restored after every mutant, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "seqmnist"
# file -> the tests that cover it (fast ones: the whole suite per mutant would take hours)
TARGETS = {
    "training/trainer.py": ["tests/test_trainer.py", "tests/test_recipe_defaults.py",
                            "tests/test_training.py", "tests/test_reliability.py", "-m",
                            "not slow", "-k", "not fuzz and not edited_run and not kill_at_every"],
    "runs/train.py": ["tests/test_trainer.py", "tests/test_training.py",
                      "tests/test_reliability.py", "-m", "not slow", "-k",
                      "not fuzz and not edited_run and not kill_at_every"],
    "training/update.py": ["tests/test_trainer.py", "tests/test_recipe_defaults.py",
                           "tests/test_training.py", "-k", "not slow and (step or adam or cross "
                           "or replicas or one_cycle or deterministic or resume)"],
    "runs/recorder.py": ["tests/test_trainer.py", "tests/test_record.py",
                         "tests/test_reliability.py", "-k", "not fuzz and not kill_at_every"],
    "training/parallel.py": ["tests/test_models.py", "tests/test_training.py", "-k", "replicas"],
    "training/config.py": ["tests/test_training.py", "tests/test_cli.py", "tests/test_record.py",
                           "-k", "preset or config or explicit or bad or one_cycle or recipe or "
                           "slot"],
    "kernels/backends.py": ["tests/test_kernel.py", "tests/test_models.py", "-k",
                            "backend or replicas or install or native or disabling"],
    "kernels/lstm_kernel.py": ["tests/test_kernel.py"],
    "training/metrics.py": ["tests/test_report.py", "tests/test_training.py",
                            "tests/test_record.py", "-k", "predictions or anytime or section or "
                            "end_to_end or learns or figure or evaluates"],
    "evaluation/analysis.py": ["tests/test_report.py", "tests/test_verdicts.py",
                               "tests/test_stats.py"],
}
SKIP = re.compile(r"^\s*(def |class |@|return\b|if |elif |else:|for |while |try:|except|finally:|"
                  r"with |#|\"\"\"|'''|raise\b|import |from |pass$|\)|\]|\}|global |nonlocal )")
FLIPS = [(" < ", " <= "), (" <= ", " < "), (" > ", " >= "), (" >= ", " > "), (" == ", " != "),
         (" != ", " == "), ("True", "False"), ("False", "True"), (" + 1", " - 1"),
         (" - 1", " + 1")]


def mutants(path: Path) -> list[tuple[int, str, str]]:
    """(line number, description, new line) for every mutant of ``path``."""
    lines = path.read_text().splitlines()
    out, in_doc = [], False
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.count('"""') % 2 == 1:
            in_doc = not in_doc
            continue
        if in_doc or not stripped:
            continue
        opens = sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
        prev = lines[n - 2].rstrip() if n > 1 else ""
        continued = prev.endswith(("(", ",", "\\", "[", "{", "=")) or prev.endswith(" and") \
            or prev.endswith(" or")
        if not SKIP.match(line) and opens == 0 and not continued and not line.endswith(":"):
            indent = line[:len(line) - len(line.lstrip())]
            out.append((n, f"delete: {stripped[:70]}", indent + "pass"))
        for old, new in FLIPS:
            if old in line and not stripped.startswith("#"):
                out.append((n, f"{old.strip()} -> {new.strip()}: {stripped[:60]}",
                            line.replace(old, new, 1)))
    return out


def run_tests(args: list[str], timeout: float) -> str:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"  # counts as killed: the change broke something
    return "survived" if proc.returncode == 0 else "killed"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--max", type=int, default=None, help="mutants to try per file (a sample)")
    p.add_argument("--seed", type=int, default=0, help="for the sample")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = p.parse_args()
    rows = []
    for name in args.files:
        path = SRC / name
        original = path.read_text()
        found = mutants(path)
        if args.max is not None and len(found) > args.max:
            found = sorted(random.Random(args.seed).sample(found, args.max))
        print(f"{name}: {len(found)} mutants", flush=True)
        try:
            for n, what, new in found:
                lines = original.splitlines()
                lines[n - 1] = new
                path.write_text("\n".join(lines) + "\n")
                start = time.perf_counter()
                result = run_tests(TARGETS[name], args.timeout)
                rows.append((name, n, what, result))
                print(f"  {result:8s} {name}:{n} {what} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
        finally:
            path.write_text(original)
    survived = [r for r in rows if r[3] == "survived"]
    print(f"\n{len(rows)} mutants, {len(rows) - len(survived)} killed, {len(survived)} survived")
    if args.out:
        table = ["| file | line | change | result |", "| --- | --- | --- | --- |"]
        table += [f"| {f} | {n} | `{w.replace('|', '/')}` | {r} |" for f, n, w, r in rows]
        args.out.write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
