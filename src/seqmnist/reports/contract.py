"""``seqmnist check-model NAME``: the registry's contract, checked for anyone's model before a
comparison is trusted (the checks the registry-parametrised tests make of the built-ins).

For every view the model declares: it builds, answers (batch, classes), a gradient reaches every
trainable parameter; if it says it answers after every step, its answer after step t does not
move when later steps change, and ``forward_steps``' last step is ``forward``'s answer; if it
says what it holds, each declared state is (batch, steps, ...). On its default view: the loss
falls on one repeated batch, and if it says it exports to ONNX, onnxruntime agrees with PyTorch.
The time of one training step at batch 64 on each view is measured and shown, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.datasets import get_spec
from ..data.views import VIEWS
from ..models.checks import check_options
from ..models.layers import trainable_parameters
from ..models.registry import create_model, get_entry
from ..training.update import make_adam, step_seconds
from .export import ONNX_TOLERANCE, onnx_bytes

CAUSAL_TOLERANCE = 1e-5
OVERFIT_STEPS = 40  # Adam updates on one batch of 8, at three times the model's learning rate
FALLS_TO = 0.75  # of the first loss: a model that learns gets there (the built-ins reach ~0.2)


@dataclass
class Check:
    name: str
    view: str
    passed: bool | None  # None: measured, not judged
    detail: str


def _attempt(name: str, view: str, test) -> Check:
    """Run ``test() -> (passed, detail)``; any exception is a failure saying what it was."""
    try:
        passed, detail = test()
    except Exception as exc:  # noqa: BLE001 - a model's failure of any kind is the row's answer
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        return Check(name, view, False, f"{type(exc).__name__}: {first}")
    return Check(name, view, passed, detail)


def check_contract(model: str, dataset: str = "mnist", views: list[str] | None = None,
                   batch: int = 8, timing_batch: int = 64, seed: int = 0) -> list[Check]:
    """Every check of ``model`` (see the module docstring), in order."""
    entry = get_entry(model)
    spec = get_spec(dataset)
    classes = len(spec.classes)
    views = list(views or entry.views)
    default = entry.defaults.get("view", views[0])
    out: list[Check] = []
    for view in views:
        shape = VIEWS[view].shape(*spec.image_shape)
        torch.manual_seed(seed)
        try:
            check_options(model, shape, classes, {})
            net = create_model(model, shape, classes)
        except Exception as exc:  # noqa: BLE001
            out.append(Check("builds", view, False, str(exc)[:200]))
            continue
        out.append(Check("builds", view, True,
                         f"{trainable_parameters(net):,} trainable parameters"))
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))
        y = torch.arange(batch) % classes

        def shape_ok(net=net, x=x):
            net.eval()
            with torch.no_grad():
                got = tuple(net(x).shape)
            return got == (batch, classes), f"answers {got}, expected {(batch, classes)}"

        def gradients(net=net, x=x, y=y):
            net.train()
            net.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            missing = [n for n, p in net.named_parameters() if p.requires_grad and
                       (p.grad is None or not bool(p.grad.ne(0).any()))]
            return not missing, ("every trainable parameter" if not missing else
                                 f"no gradient reaches {', '.join(missing[:4])}"
                                 f"{' and more' if len(missing) > 4 else ''}")

        out += [_attempt("output shape", view, shape_ok),
                _attempt("gradient to every parameter", view, gradients)]
        if entry.steps and VIEWS[view].kind == "sequence":
            out += _steps_checks(net, x, view)
        if entry.states and VIEWS[view].kind == "sequence":
            out.append(_attempt("declared states", view, lambda net=net, x=x: _states(net, x)))
        out.append(_attempt("one training step at batch 64", view, lambda net=net, shape=shape:
                            (None, _step_time(net, shape, classes, timing_batch))))
        if view == default:
            out.append(_attempt("loss falls on one batch", view,
                                lambda net=net, x=x, y=y: _overfit(net, x, y, entry)))
            if entry.onnx:
                out.append(_attempt("ONNX agrees with PyTorch", view,
                                    lambda net=net, shape=shape: _onnx(net, shape)))
    return out


def _steps_checks(net, x, view: str) -> list[Check]:
    def causal():
        net.eval()
        t = x.shape[1] // 2
        later = x.clone()
        later[:, t:] = torch.rand_like(later[:, t:])
        with torch.no_grad():
            a, b = net.forward_steps(x), net.forward_steps(later)
        moved = float((a[:, :t] - b[:, :t]).abs().max())
        return moved <= CAUSAL_TOLERANCE, (f"the answers before step {t + 1} moved by "
                                           f"{moved:.2e} when later steps changed"
                                           if moved > CAUSAL_TOLERANCE else
                                           "no answer depends on a later step")

    def last_is_answer():
        net.eval()
        with torch.no_grad():
            gap = float((net.forward_steps(x)[:, -1] - net(x)).abs().max())
        return gap <= 1e-4, f"forward_steps' last step differs from forward by {gap:.2e}"

    return [_attempt("causal (answers after every step)", view, causal),
            _attempt("last step equals the answer", view, last_is_answer)]


def _states(net, x) -> tuple[bool, str]:
    net.eval()
    with torch.no_grad():
        states = net.forward_states(x)
    if not isinstance(states, dict) or not states:
        return False, f"forward_states returned {type(states).__name__}, not a dict of tensors"
    bad = [k for k, v in states.items()
           if not isinstance(v, torch.Tensor) or tuple(v.shape[:2]) != tuple(x.shape[:2])]
    shown = [f"{k} {tuple(v.shape)}" for k, v in states.items() if isinstance(v, torch.Tensor)]
    shapes = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    return not bad, (shapes if not bad else f"not (batch, steps, ...): {', '.join(bad)}")


def _overfit(net, x, y, entry) -> tuple[bool, str]:
    net.train()
    opt = make_adam([p for p in net.parameters() if p.requires_grad],
                    entry.defaults.get("lr", 1e-3) * 3, 1e-7)
    losses = []
    for _ in range(OVERFIT_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    fell = losses[-1] < FALLS_TO * losses[0] and np.isfinite(losses[-1])
    return fell, f"{losses[0]:.3f} -> {losses[-1]:.3f} in {OVERFIT_STEPS} updates"


def _step_time(net, shape, classes: int, batch: int) -> str:
    net.train()
    x = torch.rand(batch, *shape)
    y = torch.arange(batch) % classes
    best = step_seconds(net, x, y)
    return f"{best * 1000:.1f} ms (forward and backward, PyTorch's own layers, " \
           f"{torch.get_num_threads()} threads)"


def _onnx(net, shape) -> tuple[bool, str]:
    import onnxruntime as ort


    net.eval()
    session = ort.InferenceSession(onnx_bytes(net, shape), providers=["CPUExecutionProvider"])
    x = torch.rand(4, *shape)
    theirs = torch.from_numpy(session.run(None, {"x": x.numpy()})[0]).softmax(-1)
    with torch.no_grad():
        ours = net(x).softmax(-1)
    worst = float((theirs - ours).abs().max())
    return worst <= ONNX_TOLERANCE, f"largest difference in probability {worst:.1e}"


def table(checks: list[Check]) -> str:
    """The checks as a table: check, view, result, detail."""
    word = {True: "pass", False: "FAIL", None: "-"}
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'view':<9} result  detail"]
    lines += [f"{c.name:<{width}}  {c.view:<9} {word[c.passed]:<6}  {c.detail}" for c in checks]
    failed = sum(c.passed is False for c in checks)
    lines.append(f"{failed} of {sum(c.passed is not None for c in checks)} checks failed"
                 if failed else f"all {sum(c.passed is not None for c in checks)} checks passed")
    return "\n".join(lines)
