"""Train a small model with BatchNorm on real data (digits or Fashion-MNIST) and save its state_dict.

python -m studies.train --data digits --arch resnet --out studies/models/resnet_digits.pt
python -m studies.train --data fashion --arch resnet --epochs 8 --out runs/models/resnet_fashion.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader

from frandi_core import build_architecture
from frandi_core.data import FASHION_ROOT, accuracy, labeled_data

ARCHS = {
    "resnet": "frandi_core.models:resnet",
    "separable": "frandi_core.models:separable",
}


def train(
    arch: str,
    data: str,
    *,
    kwargs: dict | None = None,
    epochs: int = 30,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    root: str | None = None,
    threads: int = 2,
) -> tuple[torch.nn.Module, float]:
    """SGD with momentum and a cosine schedule, 1-pixel random shifts; returns (model, test accuracy %)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = build_architecture(ARCHS.get(arch, arch), kwargs or {})
    train_set, test_set = labeled_data(data, "train", root), labeled_data(data, "test", root)
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    model.eval()
    return model, accuracy(model, test_set)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["digits", "fashion"], default="digits")
    p.add_argument("--arch", default="resnet", help="resnet, separable, or package.module:callable")
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments for the architecture")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help=f"{FASHION_ROOT} (default: that Debian folder)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    model, acc = train(
        a.arch, a.data, kwargs=json.loads(a.kwargs), epochs=a.epochs, lr=a.lr, seed=a.seed, root=a.root
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(
        f"test accuracy {acc:.2f}% ({a.data}, {a.arch}, {a.epochs} epochs, seed {a.seed}, "
        f"{time.perf_counter() - t0:.0f} s) -> {out} ({out.stat().st_size / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()
