"""Synthetic data by BatchNorm-statistics inversion (paper eq. 1, DeepInversion-style priors)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ._errors import FrandiError
from ._hooks import capture
from ._losses import batch_stats, bn_kl, total_variation
from ._model import BN_TYPES
from ._optim import adam


@dataclass(frozen=True)
class SynthConfig:
    """How to synthesize: batch sizes, optimization budget, image priors and the seed."""

    batch_size: int = 128
    heldout_size: int = 128
    iterations: int = 300
    lr: float = 0.1
    tv: float = 1e-2
    l2: float = 1e-4
    jitter: int = 1
    flip: bool = False
    seed: int = 0
    # [low, high]: the values the model's inputs can take (after the user's normalization), each bound one number
    # or one per input channel; synthetic inputs are kept inside. None: unbounded (inputs can drift far outside)
    input_range: tuple[float | tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "heldout_size", "iterations"):
            if getattr(self, name) < 1:
                raise FrandiError(f"synthetic.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise FrandiError(f"synthetic.lr must be > 0, got {self.lr}")
        if self.input_range is not None:
            _check_range(self.input_range)


Bounds = tuple[float | tuple[float, ...], ...]


def _check_range(bounds: Bounds) -> None:
    """Refuse a range that is not [low, high] with low < high, each bound a number or one number per channel."""
    how = "write [low, high], each a number or a list with one number per input channel, low < high"
    if len(bounds) != 2:
        raise FrandiError(f"synthetic.input_range must be [low, high], got {list(bounds)}; {how}")
    lo, hi = (b if isinstance(b, tuple) else (b,) for b in bounds)
    if not lo or not hi or (len(lo) != len(hi) and 1 not in (len(lo), len(hi))):
        raise FrandiError(f"synthetic.input_range has {len(lo)} low and {len(hi)} high values; {how}")
    n = max(len(lo), len(hi))  # a single number bounds every channel
    if any(not a < b for a, b in zip(lo * n if len(lo) == 1 else lo, hi * n if len(hi) == 1 else hi, strict=True)):
        raise FrandiError(f"synthetic.input_range must have low < high, got {list(bounds)}; {how}")


def input_bounds(bounds: Bounds, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``bounds`` as two tensors that broadcast over a batch of ``input_shape`` (a per-channel bound along dim 1)."""
    _check_range(bounds)
    out = []
    for b in bounds:
        t = torch.tensor(b, dtype=torch.float32)
        if t.dim() == 1 and len(t) != 1:
            if len(t) != input_shape[0]:
                raise FrandiError(
                    f"synthetic.input_range gives {len(t)} values per bound, but the input has {input_shape[0]} "
                    f"channel(s) (input_shape {list(input_shape)}); give one value, or one per channel"
                )
            t = t.view(-1, *([1] * (len(input_shape) - 1)))
        out.append(t.reshape(-1)[0] if t.numel() == 1 else t)
    return out[0], out[1]


@dataclass(frozen=True)
class SyntheticData:
    """A recovery batch (for Feature Regression) and a held-out batch (for Output Discrepancy)."""

    recovery: torch.Tensor
    heldout: torch.Tensor


def bn_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the model's BatchNorm layers that track running statistics."""
    return [n for n, m in model.named_modules() if isinstance(m, BN_TYPES) and m.running_mean is not None]


class BNMatcher:
    """Hooks every BN layer once; after a forward, ``loss()`` is the summed KL of batch vs running statistics.

    Running statistics are concatenated once, so the KL over all layers is a handful of tensor ops.
    Use as a context manager: the hooks are removed on exit, whatever happens.
    """

    def __init__(self, model: nn.Module) -> None:
        names = bn_names(model)
        if not names:
            raise FrandiError("the model has no BatchNorm layers with running statistics: cannot synthesize data")
        modules = dict(model.named_modules())
        self._bns = [modules[n] for n in names]
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._capture = capture(model, names, inputs=True)
        run_mean, run_var = [], []
        for bn in self._bns:
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
            assert bn.running_mean is not None and bn.running_var is not None
            run_mean.append(bn.running_mean.float())
            run_var.append(bn.running_var.float() + bn.eps)
        self.eps = torch.cat([torch.full_like(m, bn.eps) for m, bn in zip(run_mean, self._bns, strict=True)])
        self._shifts = run_mean
        self.run_mean = torch.cat(run_mean)
        self.run_var = torch.cat(run_var)
        self.names = names

    def __enter__(self) -> BNMatcher:
        self._feats = self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._capture.__exit__(*exc)  # type: ignore[arg-type]

    def loss(self) -> torch.Tensor:
        """KL summed over all BN layers for the last forward pass."""
        means, variances = [], []
        for n, shift in zip(self.names, self._shifts, strict=True):
            mean, var = batch_stats(self._feats[n].float(), shift)
            means.append(mean)
            variances.append(var)
        return bn_kl(torch.cat(means), torch.cat(variances) + self.eps, self.run_mean, self.run_var)


@torch.no_grad()
def bn_kl_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum over BN layers of KL(N(batch stats of the BN input) || N(running stats)), model in eval (a metric)."""
    if model.training:
        raise FrandiError("bn_kl_loss needs the model in eval mode (train mode would overwrite BN statistics)")
    with BNMatcher(model) as m:
        model(x)
        return m.loss()


def _augment(x: torch.Tensor, jitter: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    if x.dim() < 4:
        return x
    if jitter > 0:
        dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dx, dy), dims=(-2, -1))
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        x = torch.flip(x, dims=(-1,))
    return x


def invert(
    model: nn.Module,
    input_shape: tuple[int, ...],
    n: int,
    config: SynthConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "synthesize",
) -> torch.Tensor:
    """Optimize n random inputs so the BN input statistics match the running ones; returns them on CPU."""
    if model.training:
        raise FrandiError(
            "synthesize needs the model in eval mode (BN running statistics); call model.eval()"
        )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_shape), generator=gen).to(device)
    bounds = None if config.input_range is None else input_bounds(config.input_range, input_shape)
    if bounds is not None:
        lo, hi = (b.to(device) for b in bounds)
        x = torch.maximum(torch.minimum(x, hi), lo)
    x.requires_grad_(True)
    opt = adam([x], config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.iterations)
    bar = tqdm(range(config.iterations), desc=desc, disable=not progress, leave=False)
    with BNMatcher(model) as matcher:
        for i in bar:
            opt.zero_grad(set_to_none=True)
            model(_augment(x, config.jitter, config.flip, gen))
            kl = matcher.loss()
            loss = kl + config.tv * total_variation(x) + config.l2 * x.pow(2).mean()
            (grad,) = torch.autograd.grad(loss, x)  # gradients for the input only: the model is untouched
            x.grad = grad
            opt.step()
            sched.step()
            if bounds is not None:
                with torch.no_grad():  # projected back into the inputs the model can be given
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            if progress and i % 10 == 0:
                bar.set_postfix(kl=f"{kl.item():.3g}", refresh=False)
    return x.detach().cpu()


def synthesize(
    model: nn.Module,
    input_shape: tuple[int, ...],
    config: SynthConfig = SynthConfig(),
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SyntheticData:
    """Make the recovery batch and an independent held-out batch (seeds ``2 seed`` and ``2 seed + 1``, so no
    batch of one seed is ever a batch of another)."""
    rec = invert(
        model,
        input_shape,
        config.batch_size,
        config,
        seed=2 * config.seed,
        device=device,
        progress=progress,
        desc="synthesize recovery batch",
    )
    held = invert(
        model,
        input_shape,
        config.heldout_size,
        config,
        seed=2 * config.seed + 1,
        device=device,
        progress=progress,
        desc="synthesize held-out batch",
    )
    return SyntheticData(recovery=rec, heldout=held)
