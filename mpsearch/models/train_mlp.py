"""Train the embedded MLP on the package's own Fashion-MNIST images, seeded and reproducible on CPU.

The full training split is not shipped, so the MLP trains on the ``heldout_train`` images (the 2,000
calibration images and test images 0..7,999) and is scored on the ``heldout`` ones (test images
8,000..9,999; :mod:`mpsearch.models.fmnist`). Besides the labels it learns from the embedded ResNet-20
(knowledge distillation: its softened logits on the same shifted, flipped and mixed-up views). The recipe
was chosen on a validation fold of the training images (``--val``), never on the held-out ones. Writes, into
``mpsearch/models/assets``, the checkpoint (a plain state dict in float16) and its metadata::

    python -m mpsearch.models.train_mlp --epochs 50
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from mpsearch.models.fmnist import HELDOUT_START, load_split
from mpsearch.models.mlp import MLP
from mpsearch.models.registry import load_state_dict, resnet20_fmnist
from mpsearch.models.train_default import accuracy

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"
SPLIT = (f"trained on the 2,000 calibration images (training split) and test images 0..{HELDOUT_START - 1:,}; "
         f"held-out: test images {HELDOUT_START:,}..9,999 (data=fmnist_heldout)")


def augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image shifted by its own random offset of up to ``shift`` pixels (edge-replicated) and
    flipped left-right with probability 1/2."""
    n, size = x.shape[0], x.shape[-1]
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=gen)
    span = torch.arange(size)
    rows = (dy[:, None] + span)[:, :, None]
    cols = (dx[:, None] + span)[:, None, :]
    x = padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's peak rate (one cycle: warm-up, cosine)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--shift", type=int, default=2, help="largest random shift in pixels")
    parser.add_argument("--distill", type=float, default=0.7,
                        help="weight of the ResNet-20 teacher's loss (the labels' weighs 1 - this); 0: no teacher")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--mixup", type=float, default=0.4,
                        help="Beta(a, a) of mixup: each batch blended with a shuffled copy (the teacher sees the "
                             "blend); 0: off")
    parser.add_argument("--val", type=int, default=0,
                        help="score on the last VAL training images, trained without them (recipe tuning; the "
                             "held-out images are never used to choose the recipe); 0: train on all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    xt, yt = load_split("heldout_train").tensors
    if args.val:
        (xv, xt), (yv, yt) = (xt[-args.val:], xt[:-args.val]), (yt[-args.val:], yt[:-args.val])
        scored = "validation"
    else:
        xv, yv = load_split("heldout").tensors
        scored = "held-out"
    teacher = resnet20_fmnist() if args.distill > 0 else None

    model = MLP(dropout=args.dropout)
    batches = len(yt) // args.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * batches,
                                                pct_start=0.1)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(batches):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x, y = augment(xt[idx], args.shift, gen), yt[idx]
            lam, pair = 1.0, None
            if args.mixup > 0:
                lam = float(torch.distributions.Beta(args.mixup, args.mixup).sample())
                pair = torch.randperm(len(idx), generator=gen)
                x = lam * x + (1 - lam) * x[pair]
            logits = model(x)
            loss = lam * F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            if pair is not None:
                loss = loss + (1 - lam) * F.cross_entropy(logits, y[pair], label_smoothing=args.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                loss = (1 - args.distill) * loss + args.distill * distill_loss(logits, target, args.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("epoch %d  loss %.3f  %s acc %.4f  (%.0f s)",
                 epoch + 1, loss.item(), scored, accuracy(model, xv, yv), time.time() - start)
    train_seconds = time.time() - start

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mlp_fmnist.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    # scored as shipped: the float32 model built from the float16 weights
    top1 = accuracy(load_state_dict(MLP(), path), xv, yv)
    meta = {"model": "mlp_fmnist (784-1536-1536-1536-10, float16 weights)", "dataset": "Fashion-MNIST",
            "split": SPLIT, "epochs": args.epochs, "seed": args.seed,
            "recipe": {k: getattr(args, k) for k in ("batch_size", "lr", "weight_decay", "dropout", "label_smoothing",
                                                       "shift", "distill", "temperature", "mixup")},
            f"{'val' if args.val else 'heldout'}_top1": round(top1, 4), "torch": torch.__version__,
            "train_seconds": round(train_seconds)}
    (args.out / "mlp_fmnist.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("saved to %s: %s", args.out, meta)


if __name__ == "__main__":
    main()
