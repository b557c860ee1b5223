"""Print the Markdown tables of BENCHMARKS.md from the JSON files run.py writes.

    python benchmarks/tables.py                      # benchmarks/out/*.json, your latest runs
    python benchmarks/tables.py benchmarks/results   # the runs behind BENCHMARKS.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def spread(s: dict, fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def epoch_table(data: dict) -> list[str]:
    peak = data["meta"]["peak_fp32_gflops"]
    rows = ["| model | implementation | s / epoch, median (min–max) | ratio to Keras, median "
            "(min–max) | peak RSS MB | RSS ratio to Keras | test acc. after 2 epochs | GFLOP/s "
            "(% of fp32 peak) |", "|---|---|---|---|---|---|---|---|"]
    for model, result in data["result"].items():
        for impl, s in result["summary"].items():
            ratio = spread(s["ratio_vs_keras"]) if "ratio_vs_keras" in s else "1"
            rss_ratio = spread(s["rss_ratio_vs_keras"]) if "rss_ratio_vs_keras" in s else "1"
            rows.append(f"| {model} | {impl} | {spread(s['epoch_seconds'], '{:.1f}')} | {ratio} | "
                        f"{s['peak_rss_mb']['median']:.0f} | {rss_ratio} | "
                        f"{s['test_accuracy']['median']:.4f} | {s['gflops']:.0f} "
                        f"({100 * s['gflops'] / peak:.0f}%) |")
    return rows


def fast_table(data: dict) -> list[str]:
    rows = ["| model | seeds | mean test acc. | reached target | wall s, median (min–max) | "
            "Keras recipe s (10 x its epoch) | ratio | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for model, r in data["result"].items():
        keras = sorted(r["keras_recipe_seconds"])
        rss = max(x["peak_rss_mb"] for x in r["runs"])
        rows.append(f"| {model} | {len(r['runs'])} | {r['mean_accuracy']:.4f} | "
                    f"{r['reached']}/{len(r['runs'])} (≥ {r['target_accuracy']:.1%}) | "
                    f"{spread(r['wall_seconds'], '{:.1f}')} | "
                    f"{', '.join(f'{k:.0f}' for k in keras)} | {r['ratio_vs_keras_recipe']:.3f} | "
                    f"{rss:.0f} |")
        rows.append("")
    per_seed = ["| model | seed | test accuracy | wall s |", "|---|---|---|---|"]
    for model, r in data["result"].items():
        per_seed += [f"| {model} | {x['seed']} | {x['test_accuracy']:.4f} | {x['wall_seconds']:.1f} |"
                     for x in r["runs"]]
    return [r for r in rows if r] + [""] + per_seed


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "meta" not in data:  # load_web.py's results have their own table
            continue
        print(f"## {path.name} ({data['meta']['started']}, torch {data['meta']['torch']}, "
              f"{data['meta']['cores']} cores)\n")
        suite = data["meta"]["suite"]
        if suite == "epoch":
            print("\n".join(epoch_table(data)))
        elif suite == "fast":
            print("\n".join(fast_table(data)))
        else:
            print(f"`seqmnist --help`: {spread(data['result']['help_seconds'], '{:.3f}')} s")
        print()


if __name__ == "__main__":
    main()
