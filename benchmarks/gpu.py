"""One script for a GPU: is seqmnist right on CUDA, and how fast is it there?

    python benchmarks/gpu.py                  # on a machine with a GPU: under ten minutes
    python benchmarks/gpu.py --device cpu --tiny   # the same checks, small, on CPU (CI)

It checks, then measures, writing benchmarks/out/gpu-DEVICE.json and printing a Markdown table
for BENCHMARKS.md:
1. correctness: a few batches of every registered model at every view it reads, forward and
   backward, on the device against the CPU (float32: logits, loss and every gradient within
   tolerance), and the explainer's parts on the device (every step's answer, the states a model
   declares, integrated gradients) against the CPU;
2. the tutorial recipe's seconds per epoch for the LSTM and the CNN (one epoch each);
3. the fast preset's time to the accuracy bar (LSTM 98.6%, CNN 99.2%: one seed each, test
   accuracy after each epoch as the tutorial's protocol reads it);
4. the research models' training step at 784 steps (pixels; batch 64);
5. one budget run per sequence model on permuted pixels (--budget, default 20 s).
A check that fails is reported and makes the exit status 1; the measurements still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BARS = {"lstm": 0.986, "cnn": 0.992}  # every seed over these: the README's accuracy bar


def check_models(device: str, tiny: bool) -> list[dict]:
    """Every model at every view: forward and backward on ``device`` against the CPU."""
    from seqmnist.data.views import VIEWS
    from seqmnist.models.registry import MODELS, create_model

    side = 8 if tiny else 28
    rows = []
    for name, entry in MODELS.items():
        for view in entry.views:
            shape = VIEWS[view].shape(side, side)
            torch.manual_seed(0)
            cpu = create_model(name, shape, 10).train()
            dev = create_model(name, shape, 10).to(device).train()
            dev.load_state_dict(cpu.state_dict())
            for m in (cpu, dev):  # dropout would draw different masks on the two devices
                for module in m.modules():
                    if isinstance(module, torch.nn.Dropout):
                        module.p = 0.0
            x = torch.rand(4 if tiny else 32, *shape)
            y = torch.randint(0, 10, (len(x),))
            out = {}
            for tag, model, xx, yy in (("cpu", cpu, x, y), ("dev", dev, x.to(device),
                                                            y.to(device))):
                logits = model(xx)
                loss = torch.nn.functional.cross_entropy(logits, yy)
                loss.backward()
                out[tag] = (logits.detach().cpu(), loss.detach().cpu(),
                            {k: p.grad.detach().cpu() for k, p in model.named_parameters()
                             if p.grad is not None})
            problems = []
            if not torch.allclose(out["cpu"][0], out["dev"][0], rtol=1e-3, atol=1e-4):
                problems.append("logits differ by "
                                f"{(out['cpu'][0] - out['dev'][0]).abs().max():.2e}")
            for k, g in out["cpu"][2].items():
                scale = g.abs().max().item() + 1e-6
                if (g - out["dev"][2][k]).abs().max().item() > 1e-2 * scale:
                    problems.append(f"gradient of {k} differs")
                    break
            rows.append(dict(check="model", model=name, view=view, ok=not problems,
                             problems=problems))
    return rows


def check_explainer(device: str, tiny: bool) -> list[dict]:
    """The explainer's parts on ``device`` against the CPU, for every model that answers after
    every step: the belief, the declared states and integrated gradients."""
    from seqmnist.data.views import VIEWS
    from seqmnist.models.registry import MODELS, create_model
    from seqmnist.reports.explainer import integrated_gradients

    side = 8 if tiny else 28
    rows = []
    for name, entry in MODELS.items():
        if not entry.steps:
            continue
        shape = VIEWS["rows"].shape(side, side)
        torch.manual_seed(0)
        cpu = create_model(name, shape, 10).eval()
        dev = create_model(name, shape, 10).to(device).eval()
        dev.load_state_dict(cpu.state_dict())
        x = torch.rand(1, *shape)
        problems = []
        with torch.no_grad():
            a, b = cpu.forward_steps(x), dev.forward_steps(x.to(device)).cpu()
            if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
                problems.append("belief differs")
            if entry.states:
                sa, sb = cpu.forward_states(x), dev.forward_states(x.to(device))
                for k in sa:
                    if not torch.allclose(sa[k], sb[k].cpu(), rtol=1e-3, atol=1e-4):
                        problems.append(f"state {k} differs")
        try:
            ia, _ = integrated_gradients(cpu, x.clone(), 0)
            dev_ig, _ = integrated_gradients(dev, x.to(device), 0)
            if not (abs(ia - dev_ig).max() <= 1e-2 * (abs(ia).max() + 1e-6)):
                problems.append("integrated gradients differ")
        except Exception as exc:  # Captum missing, or failing on the device
            problems.append(f"integrated gradients: {exc}")
        rows.append(dict(check="explainer", model=name, ok=not problems, problems=problems))
    return rows


def epoch_seconds(model: str, device: str, limit: int | None, out: Path,
                  dataset: str = "mnist") -> dict:
    """The tutorial recipe's seconds per epoch (one epoch on ``limit`` images, scaled)."""
    from seqmnist import TrainConfig, train

    cfg = TrainConfig(model=model, dataset=dataset, epochs=1, limit=limit, device=device)
    result = train(cfg, out=out, log=lambda *_: None, progress=False)
    images = result.metrics.train_images
    return dict(measure="tutorial epoch", model=model, device=device, images=images,
                seconds=result.history[0]["seconds"],
                seconds_per_60000=result.history[0]["seconds"] * 60000 / images)


def time_to_bar(model: str, device: str, limit: int | None, out: Path) -> dict:
    """The fast preset, one seed: training seconds until the test accuracy first reaches the
    README's bar (the tutorial protocol validates on the test set after every epoch)."""
    from seqmnist import TrainConfig, train

    start = time.perf_counter()
    result = train(TrainConfig(model=model, preset="fast", limit=limit, device=device), out=out,
                   log=lambda *_: None, progress=False)
    wall = time.perf_counter() - start
    reached = next((h for h in result.history if h["val_accuracy"] >= BARS[model]), None)
    return dict(measure="fast preset to the bar", model=model, device=device, bar=BARS[model],
                test_accuracy=result.metrics.test_accuracy, wall_seconds=round(wall, 1),
                training_seconds=result.metrics.train_seconds,
                seconds_to_bar=reached["elapsed"] if reached else None,
                epoch_reached=reached["epoch"] if reached else None)


def step_at_784(model: str, device: str, tiny: bool) -> dict:
    """One training step (forward, backward; the median of 5 after a warm-up) at 784 steps."""
    from seqmnist.models.registry import create_model

    steps = 64 if tiny else 784
    net = create_model(model, (steps, 1), 10).to(device).train()
    x = torch.rand(8 if tiny else 64, steps, 1, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    times = []
    for _ in range(6):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return dict(measure="step at 784", model=model, device=device, steps=steps,
                batch=len(x), seconds=times[len(times) // 2])


def budget_run(model: str, device: str, budget: float, out: Path,
               dataset: str = "mnist") -> dict:
    from seqmnist import TrainConfig, train

    result = train(TrainConfig(model=model, dataset=dataset, view="permuted", budget=budget,
                               device=device, protocol="research"),
                   out=out, log=lambda *_: None, progress=False)
    return dict(measure="budget run (permuted)", model=model, device=device, budget=budget,
                test_accuracy=result.metrics.test_accuracy,
                images_seen=result.metrics.images_seen,
                training_seconds=result.metrics.train_seconds)


def table(rows: list[dict]) -> str:
    lines = ["| what | model | result |", "| --- | --- | --- |"]
    per = "60,000 images"
    for r in rows:
        if r.get("check"):
            text = "ok" if r["ok"] else "FAILED: " + "; ".join(r["problems"])
            lines.append(f"| {r['check']} check | {r['model']} {r.get('view', '')} | {text} |")
        elif r["measure"] == "tutorial epoch":
            lines.append(f"| tutorial epoch ({per}, from {r['images']:,}) | {r['model']} | "
                         f"{r['seconds_per_60000']:.1f} s |")
        elif r["measure"] == "fast preset to the bar":
            reached = (f"{r['seconds_to_bar']:.1f} s of training (epoch {r['epoch_reached']})"
                       if r["seconds_to_bar"] is not None else "bar not reached")
            lines.append(f"| fast preset to {r['bar']:.1%} | {r['model']} | {reached}; final "
                         f"{r['test_accuracy']:.2%}, {r['wall_seconds']:.0f} s wall |")
        elif r["measure"] == "step at 784":
            lines.append(f"| training step, {r['steps']} steps, batch {r['batch']} | "
                         f"{r['model']} | {r['seconds'] * 1000:.1f} ms |")
        elif r["measure"] == "budget run (permuted)":
            lines.append(f"| {r['budget']:g} s budget, permuted | {r['model']} | "
                         f"{r['test_accuracy']:.2%} after {r['images_seen']:,} images |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--budget", type=float, default=None, help="seconds per budget run "
                        "(default: 20, or 1 with --tiny)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --device cpu (add --tiny for a quick check)",
              file=sys.stderr)
        return 2
    tiny, device = args.tiny, args.device
    budget = args.budget or (1.0 if tiny else 20.0)
    dataset = "digits" if tiny else "mnist"  # tiny: sklearn's 8 x 8 digits, in seconds
    rows: list[dict] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="seqmnist-gpu-") as tmp:
        runs = Path(tmp)
        steps = [lambda: check_models(device, tiny), lambda: check_explainer(device, tiny)]
        steps += [lambda m=m: [epoch_seconds(m, device, None if tiny else 12000, runs,
                                             dataset)] for m in ("lstm", "cnn")]
        if not tiny:
            steps += [lambda m=m: [time_to_bar(m, device, None, runs)] for m in BARS]
        from seqmnist.models.registry import MODELS

        research = [m for m, e in MODELS.items() if "permuted" in e.views]
        steps += [lambda m=m: [step_at_784(m, device, tiny)] for m in research]
        steps += [lambda m=m: [budget_run(m, device, budget, runs, dataset)]
                  for m in (research[:2] if tiny else research)]
        for step in steps:
            try:
                found = step()
            except Exception:  # one failure does not hide the others
                traceback.print_exc()
                failed = True
                continue
            failed |= any(r.get("check") and not r["ok"] for r in found)
            rows += found
            print(table(found).split("\n", 2)[-1], flush=True)
    record = dict(device=device, gpu=torch.cuda.get_device_name(0) if device.startswith("cuda")
                  else None, cpu=platform.processor() or platform.machine(),
                  torch=torch.__version__, tiny=tiny, rows=rows)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-{device.replace(':', '')}{'-tiny' if tiny else ''}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"\n{table(rows)}\n\nWritten: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
