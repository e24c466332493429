"""Train the embedded default model: ResNet-20 on Fashion-MNIST, seeded and reproducible on CPU.

Reads Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) and writes, into
``mpsearch/models/assets``, the checkpoint (a plain state dict), a 2,000-image calibration subset of
the training split and the full 10,000-image test split (compressed ``.npz``)::

    python -m mpsearch.models.train_default --epochs 6
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.models.fmnist import normalize, read_idx
from mpsearch.models.resnet import resnet20

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2-pixel-padded crop and horizontal flip."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = padded[:, :, dy:dy + 28, dx:dx + 28]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(1000), y.split(1000)))
    return correct / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_x = read_idx(args.data / "train-images-idx3-ubyte.gz")
    train_y = read_idx(args.data / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(args.data / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(args.data / "t10k-labels-idx1-ubyte.gz")
    xt, yt = normalize(train_x), torch.from_numpy(train_y.astype(np.int64))
    xv, yv = normalize(test_x), torch.from_numpy(test_y.astype(np.int64))

    model = resnet20()
    steps = args.epochs * (len(yt) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(len(yt) // args.batch_size):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(xt[idx], gen)), yt[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("epoch %d  loss %.3f  test acc %.4f  (%.0f s)",
                 epoch + 1, loss.item(), accuracy(model, xv, yv), time.time() - start)

    test_acc = accuracy(model, xv, yv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "resnet20_fmnist.pt")
    calib_idx = np.random.default_rng(args.seed).choice(len(train_y), 2000, replace=False)
    np.savez_compressed(args.out / "fmnist_calib.npz", images=train_x[calib_idx], labels=train_y[calib_idx])
    np.savez_compressed(args.out / "fmnist_test.npz", images=test_x, labels=test_y)
    meta = {"model": "resnet20", "dataset": "Fashion-MNIST", "epochs": args.epochs,
            "seed": args.seed, "test_top1": round(test_acc, 4), "torch": torch.__version__,
            "train_seconds": round(time.time() - start)}
    (args.out / "resnet20_fmnist.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("saved to %s: %s", args.out, meta)


if __name__ == "__main__":
    main()
