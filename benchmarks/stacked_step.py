"""An experiment kept for its measurements (BENCHMARKS.md section 25): several seeds of one
recurrent model trained as one computation. Not part of seqmnist: on the machines measured it
trained seeds more slowly than seqmnist's side-by-side threads, so ``compare`` does not use it.

K copies of a model's architecture, each with its own weights, run on K batches at once
(``Stacked``): each matrix product becomes one batched product over the seeds (``baddbmm``),
each elementwise operation runs on K times the numbers; the GRU's and tanh RNN's recurrence has
its backward written out (``Recurrence``). Nothing crosses seeds: seed k's outputs, loss and
gradients depend on seed k's weights and batch only. ``SeedGroup`` is the update: each seed
keeps its own trainer thread, shuffles, dropout generator (seed k's masks drawn as alone) and
checkpoint (an ordinary Adam state), and hands its batch to the group; when every seed still
training has handed one in, one thread trains them all, with one Adam over the stacked weights
that has each seed's own learning rate, betas and step count. tests/test_stacked_step.py checks
in float64 that each seed trains exactly as its own ``Update`` would.

    from stacked_step import SeedGroup, stack  # with benchmarks/ on sys.path
"""

from __future__ import annotations

import copy
import threading

import torch
from torch import nn
from torch.nn import functional as F

from seqmnist.models.layers import Dropout, set_dropout_generator
from seqmnist.models.recurrent import Recurrent
from seqmnist.training.config import TrainConfig
from seqmnist.training.parallel import dropout_generator
from seqmnist.training.update import make_adam


class StackError(ValueError):
    """A model has a layer with weights that no stacked twin computes."""


def _stacked(params: list[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([p.detach() for p in params]).contiguous(),
                        requires_grad=params[0].requires_grad)


class StackedLinear(nn.Module):
    SOURCES = {"weight": "weight", "bias": "bias"}

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.k = len(layers)
        self.weight = _stacked([m.weight for m in layers])  # (K, out, in)
        self.bias = _stacked([m.bias for m in layers])  # (K, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.baddbmm(self.bias.unsqueeze(1), x.reshape(self.k, -1, x.shape[-1]),
                          self.weight.transpose(1, 2))
        return y.reshape(*x.shape[:-1], -1)


class StackedLayerNorm(nn.Module):
    SOURCES = {"weight": "weight", "bias": "bias"}

    def __init__(self, layers: list[nn.LayerNorm]):
        super().__init__()
        if len(layers[0].normalized_shape) != 1 or not layers[0].elementwise_affine:
            raise StackError("only a LayerNorm over the last dimension with weights is stacked")
        self.k, self.eps, self.shape = len(layers), layers[0].eps, layers[0].normalized_shape
        self.weight = _stacked([m.weight for m in layers])
        self.bias = _stacked([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, self.shape, eps=self.eps).reshape(self.k, -1, x.shape[-1])
        return torch.addcmul(self.bias.unsqueeze(1), y, self.weight.unsqueeze(1)).reshape(x.shape)


class StackedDropout(nn.Module):
    """Seed k's mask over its own rows, drawn from seed k's generator as ``Dropout`` draws it:
    the mask takes the input's layout and is filled in memory order, so a seed's rows laid out
    as its input is alone (time-major after a recurrent layer) get the same numbers."""

    SOURCES: dict = {}

    def __init__(self, p: float, generators: list[torch.Generator | None]):
        super().__init__()
        self.p, self.generators = p, generators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty_like(x)
        n = len(x) // len(self.generators)
        for k, g in enumerate(self.generators):
            mask[k * n:(k + 1) * n].uniform_(generator=g)
        return x * mask.ge_(self.p).mul_(1.0 / (1.0 - self.p))


class Recurrence(torch.autograd.Function):
    """The recurrence of K GRU or tanh-RNN layers over time-major input projections
    gi (T, K, N, G*H) (PyTorch's gate order and equations), with its backward written out:
    autograd would record a dozen operations per step and add up the recurrent weights'
    gradient step by step; here each backward step is the gate maths and one product for the
    state's gradient, and the weights' gradient is one product over every step at the end.
    Returns every step's state, (T, K, N, H)."""

    @staticmethod
    def forward(ctx, cell: str, gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor):
        steps, k, n, _ = gi.shape
        hidden = w_hh.shape[-1]
        w, b = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
        hs = gi.new_empty(steps, k, n, hidden)
        h = gi.new_zeros(k, n, hidden)
        if cell == "gru":  # kept per step: r, z, W_hn h + b_hn and the candidate state
            kept = gi.new_empty(steps, k, n, 4 * hidden)
            for t in range(steps):
                gh = torch.baddbmm(b, h, w)
                g = kept[t]
                rz, hn, new = g[..., :2 * hidden], g[..., 2 * hidden:3 * hidden], g[..., 3 * hidden:]
                torch.add(gi[t, ..., :2 * hidden], gh[..., :2 * hidden], out=rz).sigmoid_()
                hn.copy_(gh[..., 2 * hidden:])
                torch.addcmul(gi[t, ..., 2 * hidden:], rz[..., :hidden], hn, out=new).tanh_()
                h = torch.addcmul(new, rz[..., hidden:], h - new, out=hs[t])
            ctx.save_for_backward(hs, kept, w_hh)
        else:
            for t in range(steps):
                h = torch.baddbmm(b, h, w).add_(gi[t]).tanh_()
                hs[t] = h
            ctx.save_for_backward(hs, w_hh)
        ctx.cell = cell
        return hs

    @staticmethod
    def backward(ctx, d_hs: torch.Tensor):
        hs, w_hh = ctx.saved_tensors[0], ctx.saved_tensors[-1]
        steps, k, n, hidden = hs.shape
        gru = ctx.cell == "gru"
        d_hs = d_hs.contiguous()
        # the gradients of the gates' inputs; the recurrent part's laid out seed-major, so that
        # the weights' gradient is one product over every step
        d_gi = hs.new_empty(steps, k, n, w_hh.shape[1])
        d_gh = hs.new_empty(k, steps, n, w_hh.shape[1]) if gru else None
        zero = torch.zeros_like(hs[0])
        dh = zero
        for t in range(steps - 1, -1, -1):
            dh = dh + d_hs[t]
            gi_t = d_gi[t]
            if gru:  # h = new + z (before - new), new = tanh(a_n + r hn)
                g = ctx.saved_tensors[1][t]
                r, z = g[..., :hidden], g[..., hidden:2 * hidden]
                hn, new = g[..., 2 * hidden:3 * hidden], g[..., 3 * hidden:]
                before = hs[t - 1] if t else zero
                gh_t = d_gh[:, t]
                d_a = gi_t[..., 2 * hidden:]
                torch.mul(dh * (1 - z), 1 - new * new, out=d_a)
                torch.mul(d_a, r, out=gh_t[..., 2 * hidden:])
                torch.mul(d_a * hn, r * (1 - r), out=gi_t[..., :hidden])
                torch.mul(dh * (before - new), z * (1 - z), out=gi_t[..., hidden:2 * hidden])
                gh_t[..., :2 * hidden] = gi_t[..., :2 * hidden]
                dh = torch.baddbmm(dh * z, gh_t, w_hh)
            else:  # h = tanh(a + W h + b)
                torch.mul(dh, 1 - hs[t] * hs[t], out=gi_t)
                dh = torch.bmm(gi_t, w_hh)
        if not gru:
            d_gh = d_gi.transpose(0, 1)
        # step 0 read the zero state: only steps 1.. add to the weights' gradient
        later = d_gh[:, 1:].reshape(k, (steps - 1) * n, -1)
        read = hs[:-1].transpose(0, 1).reshape(k, (steps - 1) * n, hidden)
        d_w = torch.bmm(later.transpose(1, 2), read)
        return None, d_gi, d_w, d_gh.sum((1, 2))


class StackedRecurrent(nn.Module):
    """K one-direction GRU or tanh-RNN layers (``Recurrence``). An LSTM layer is not stacked:
    seqmnist's LSTM kernel trains one seed faster than a stack of them trains each."""

    SOURCES = {"rnn.weight_ih_l0": "w_ih", "rnn.weight_hh_l0": "w_hh",
               "rnn.bias_ih_l0": "b_ih", "rnn.bias_hh_l0": "b_hh"}

    def __init__(self, layers: list[Recurrent]):
        super().__init__()
        first = layers[0]
        if first.rnn.bidirectional or first.cell not in ("gru", "rnn"):
            raise StackError(f"a {first.keras_name} layer is not stacked")
        self.k, self.cell, self.hidden = len(layers), first.cell, first.hidden
        self.return_sequences = first.return_sequences
        for source, name in self.SOURCES.items():
            setattr(self, name, _stacked([m.get_parameter(source) for m in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, hidden = self.k, self.hidden
        rows, steps, features = x.shape
        n = rows // k
        gi = torch.baddbmm(self.b_ih.unsqueeze(1), x.reshape(k, n * steps, features),
                           self.w_ih.transpose(1, 2)).view(k, n, steps, -1)
        hs = Recurrence.apply(self.cell, gi.permute(2, 0, 1, 3).contiguous(), self.w_hh,
                              self.b_hh)
        if not self.return_sequences:
            return hs[-1].reshape(rows, hidden)
        # time-major, as PyTorch's recurrent layers lay out their output: the dropout that
        # follows draws each seed's mask in the order it draws it alone (see StackedDropout)
        return hs.permute(1, 2, 0, 3).reshape(rows, steps, hidden)


def _twin(module: nn.Module, twins: list[nn.Module], generators) -> nn.Module | None:
    """The stacked twin of a layer (from the K models' copies of it), or None to look inside."""
    if isinstance(module, Recurrent):
        return StackedRecurrent(twins)
    if isinstance(module, nn.Linear):
        return StackedLinear(twins)
    if isinstance(module, nn.LayerNorm):
        return StackedLayerNorm(twins)
    if isinstance(module, Dropout):
        return StackedDropout(module.p, generators)
    return None


class Stacked(nn.Module):
    """K models of one architecture as one module over (K*N, ...) inputs. ``pairs`` lists, in
    the models' parameter order, each stacked weight with the K models' own tensors."""

    def __init__(self, models: list[nn.Module], generators: list[torch.Generator | None]):
        super().__init__()
        if not models:
            raise StackError("nothing to stack")
        self.k = len(models)
        self.net = copy.deepcopy(models[0])
        sources: dict[str, str] = {}
        self._replace(self.net, models, generators, "", sources)
        left = [n for n, _ in self.net.named_parameters() if n not in sources.values()]
        if left:
            raise StackError(f"{', '.join(left[:3])}: weights of a layer that no stacked layer "
                             "computes")
        own = dict(self.net.named_parameters())
        self.pairs = [(own[sources[name]], [m.get_parameter(name) for m in models])
                      for name, _ in models[0].named_parameters()]

    def _replace(self, module, twins, generators, prefix, sources) -> None:
        for name, child in list(module.named_children()):
            kids = [t.get_submodule(name) for t in twins]
            twin = _twin(child, kids, generators)
            if twin is None:
                self._replace(child, kids, generators, f"{prefix}{name}.", sources)
                continue
            setattr(module, name, twin)
            for source, target in twin.SOURCES.items():
                sources[f"{prefix}{name}.{source}"] = f"{prefix}{name}.{target}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def unstack(self, seeds: list[int]) -> None:
        """Copy the stacked weights of ``seeds`` back into their models."""
        for stacked, own in self.pairs:
            for k in seeds:
                own[k].copy_(stacked[k])


def stack(models: list[nn.Module], generators: list[torch.Generator | None]) -> Stacked:
    """The K ``models`` (one architecture) as one stacked module; seed k's dropout draws from
    ``generators[k]``."""
    return Stacked(models, generators)


class SeedGroup:
    """A rendezvous of ``size`` seeds' trainers (threads of one process). Every seed either joins
    (``join``) or says it will not (``leave``, e.g. a run already finished); a step runs once
    every seed still in the group has handed in its batch."""

    def __init__(self, size: int, threads: int = 1):
        self.size, self.threads = size, threads
        self.lock = threading.Condition()
        self.members: dict[int, SeedUpdate] = {}
        self.gone: set[int] = set()  # left, or never joined
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self.results: dict[int, object] = {}
        self.busy = False
        self.stacked = None
        self.order: list[int] = []  # slot k of the stack -> member
        self.adam: dict | None = None

    def join(self, k: int, model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int
             ) -> SeedUpdate:
        """Seed ``k``'s update (k in 0..size-1), to be driven by its own trainer."""
        update = SeedUpdate(self, k, model, cfg, steps_per_epoch)
        with self.lock:
            if self.stacked is not None or k in self.members or k in self.gone:
                raise RuntimeError(f"seed slot {k} joined late or twice")
            self.members[k] = update
        return update

    def leave(self, k: int) -> None:
        """Seed ``k`` trains no more (finished, stopped early, failed, or never started)."""
        with self.lock:
            if k in self.gone:
                return
            self.gone.add(k)
            self.pending.pop(k, None)
            self.lock.notify_all()

    def _waiting_for(self) -> set[int]:
        return set(range(self.size)) - self.gone - set(self.pending)

    def submit(self, k: int, x: torch.Tensor, y: torch.Tensor, total: int):
        """Hand in seed k's batch; returns its (summed loss, correct) once the step that trained
        it has run (in whichever thread handed in the last batch)."""
        with self.lock:
            self.pending[k] = (x, y, total)
            self.lock.notify_all()
            while k not in self.results:
                if not self.busy and not self._waiting_for():
                    self.busy, batches = True, dict(self.pending)
                    self.pending.clear()
                    self.lock.release()
                    try:
                        out = self._step(batches)
                    except BaseException as exc:  # every seed of this step gets the error
                        out = {j: exc for j in batches}
                    finally:
                        self.lock.acquire()
                    self.results.update(out)
                    self.busy = False
                    self.lock.notify_all()
                else:
                    self.lock.wait()
            result = self.results.pop(k)
        if isinstance(result, BaseException):
            raise result
        return result

    def _build(self) -> None:
        """The stacked model and Adam state, from the members' models and optimizers as they
        are once every seed is ready (after a resume's restore)."""
        self.order = sorted(self.members)
        members = [self.members[k] for k in self.order]
        self.stacked = stack([m.model for m in members], [m.generator for m in members])
        self.adam = dict(step=torch.zeros(len(members)), m=[], v=[])
        for stacked, _ in self.stacked.pairs:
            self.adam["m"].append(torch.zeros_like(stacked))
            self.adam["v"].append(torch.zeros_like(stacked))
        for i, m in enumerate(members):
            self._load_adam(i, m)

    def _load_adam(self, i: int, member: SeedUpdate) -> None:
        """Member's Adam state (its optimizer's, as a checkpoint restored it) into slice i."""
        state = member.optimizer.state
        for j, (_, own) in enumerate(self.stacked.pairs):
            s = state.get(own[i])
            if s:
                self.adam["m"][j][i].copy_(s["exp_avg"])
                self.adam["v"][j][i].copy_(s["exp_avg_sq"])
                self.adam["step"][i] = float(s["step"])

    def adam_state(self, member: SeedUpdate) -> None:
        """Write the stacked Adam state of ``member`` into its own optimizer (for its
        checkpoint): an ordinary Adam state over its model's weights."""
        with self.lock:
            if self.stacked is None or member.k not in self.order:
                return
            i = self.order.index(member.k)
            step = float(self.adam["step"][i])
            for j, (_, own) in enumerate(self.stacked.pairs):
                if own[i].requires_grad and step > 0:
                    member.optimizer.state[own[i]] = dict(
                        step=torch.tensor(step), exp_avg=self.adam["m"][j][i].clone(),
                        exp_avg_sq=self.adam["v"][j][i].clone())

    def _step(self, batches: dict[int, tuple]) -> dict[int, tuple]:
        torch.set_num_threads(self.threads)
        if self.stacked is None:
            self._build()
        order, stacked = self.order, self.stacked
        rows = max(len(b[1]) for b in batches.values())
        first = next(iter(batches.values()))[0]
        xs, ys, weights, totals = [], [], [], []
        for k in order:  # a seed without a batch (gone) or a short one: padded, weight 0
            x, y, total = batches.get(k, (first[:0], first.new_zeros(0, dtype=torch.long), 1))
            pad = rows - len(y)
            xs.append(torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x)
            ys.append(torch.cat([y, y.new_zeros(pad)]) if pad else y)
            w = torch.zeros(rows)
            w[:len(y)] = 1.0
            weights.append(w)
            totals.append(float(total))
        weights_t = torch.stack(weights).to(first.device)
        stacked.train(self.members[order[0]].model.training)
        logits = stacked(torch.cat(xs))
        y_all = torch.cat(ys)
        losses = F.cross_entropy(logits, y_all, reduction="none").view(len(order), rows)
        losses = losses * weights_t
        per_seed = losses.sum(1)
        for p, _ in stacked.pairs:
            p.grad = None
        (per_seed / torch.tensor(totals, device=first.device)).sum().backward()
        self._adam([self.members[k].optimizer.param_groups[0] for k in order])
        live = [i for i, k in enumerate(order) if k in batches]
        stacked.unstack(live)
        hits = ((logits.detach().argmax(-1) == y_all).view(len(order), rows).float()
                * weights_t).sum(1).long()
        return {k: (per_seed[i].detach(), hits[i]) for i, k in enumerate(order) if k in batches}

    @torch.no_grad()
    def _adam(self, groups: list[dict]) -> None:
        """torch.optim.Adam's update (no weight decay) with each seed's own learning rate,
        betas (a one-cycle schedule moves beta1 with the rate) and step count, read from each
        seed's own optimizer. Every seed still in the group trained this step; the slices of
        seeds gone are updated too (with no gradient) and never read again."""
        lr = torch.tensor([g["lr"] for g in groups], dtype=torch.float64)
        beta1 = torch.tensor([g["betas"][0] for g in groups], dtype=torch.float64)
        beta2 = torch.tensor([g["betas"][1] for g in groups], dtype=torch.float64)
        eps = groups[0]["eps"]
        step = self.adam["step"].add_(1).double()
        step_size = lr / (1 - beta1 ** step)
        bias2_sqrt = (1 - beta2 ** step).sqrt()
        for (p, _), m, v in zip(self.stacked.pairs, self.adam["m"], self.adam["v"]):
            if not p.requires_grad or p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            b1, b2, size, b2s = (t.to(p.dtype).view(shape)
                                 for t in (beta1, beta2, step_size, bias2_sqrt))
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad * p.grad, 1 - b2)
            p.sub_(size * m / (v.sqrt() / b2s).add_(eps))


class SeedUpdate:
    """Seed k's update in a ``SeedGroup``: the four methods the trainer drives (update.py)."""

    def __init__(self, group: SeedGroup, k: int, model: torch.nn.Module, cfg: TrainConfig,
                 steps_per_epoch: int):
        self.group, self.k, self.model = group, k, model
        self.threads = group.threads
        self.generator = dropout_generator(cfg.seed, 0)
        set_dropout_generator(model, self.generator)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_adam(params, cfg.lr, cfg.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch) \
            if cfg.schedule == "onecycle" else None
        # The group steps the weights; this optimizer holds the schedule's rate and, at each
        # checkpoint, the seed's Adam state. One step with no gradients changes nothing but
        # tells the scheduler that the optimizer is stepped.
        self.optimizer.step()

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        result = self.group.submit(self.k, x, y, len(y))
        if self.scheduler is not None:
            self.scheduler.step()
        return result

    @property
    def lr(self) -> float:  # no setter: an epoch recipe's schedule only, no budget
        return self.optimizer.param_groups[0]["lr"]

    def train(self) -> None:
        self.model.train()

    def state_dict(self) -> dict:
        self.group.adam_state(self)
        return dict(optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                    rng_dropout=[self.generator.get_state()])

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng_dropout"][0])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        self.group.leave(self.k)
