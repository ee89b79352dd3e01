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

    def __post_init__(self) -> None:
        for name in ("batch_size", "heldout_size", "iterations"):
            if getattr(self, name) < 1:
                raise FrandiError(f"synthetic.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise FrandiError(f"synthetic.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class SyntheticData:
    """A recovery batch (for Feature Regression) and a held-out batch (for Output Discrepancy)."""

    recovery: torch.Tensor
    heldout: torch.Tensor


def bn_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the model's BatchNorm layers that track running statistics."""
    return [n for n, m in model.named_modules() if isinstance(m, BN_TYPES) and m.running_mean is not None]


def bn_kl_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum over BN layers of KL(N(batch stats of the BN input) || N(running stats)), model in eval."""
    names = bn_names(model)
    if not names:
        raise FrandiError("the model has no BatchNorm layers with running statistics: cannot synthesize data")
    modules = dict(model.named_modules())
    with capture(model, names, inputs=True) as feats:
        model(x)
        total = x.new_zeros(())
        for n in names:
            bn = modules[n]
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
            mean, var = batch_stats(feats[n].float())
            assert bn.running_mean is not None and bn.running_var is not None
            total = total + bn_kl(mean, var + bn.eps, bn.running_mean, bn.running_var + bn.eps)
    return total


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
    x = torch.randn((n, *input_shape), generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.iterations)
    bar = tqdm(range(config.iterations), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        xa = _augment(x, config.jitter, config.flip, gen)
        kl = bn_kl_loss(model, xa)
        loss = kl + config.tv * total_variation(x) + config.l2 * x.pow(2).mean()
        (grad,) = torch.autograd.grad(loss, x)  # gradients for the input only: the model is untouched
        x.grad = grad
        opt.step()
        sched.step()
        if progress:
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
    """Make the recovery batch and an independent held-out batch (seeds ``seed`` and ``seed + 1``)."""
    rec = invert(
        model,
        input_shape,
        config.batch_size,
        config,
        seed=config.seed,
        device=device,
        progress=progress,
        desc="synthesize recovery batch",
    )
    held = invert(
        model,
        input_shape,
        config.heldout_size,
        config,
        seed=config.seed + 1,
        device=device,
        progress=progress,
        desc="synthesize held-out batch",
    )
    return SyntheticData(recovery=rec, heldout=held)
