"""Fashion-MNIST as shipped inside the package: a calibration subset and the full test split."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mpsearch.errors import ConfigError

MEAN, STD = 0.2860, 0.3530
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SPLITS = ("calib", "test")


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes, as the original MNIST-format distributions ship."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def normalize(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), normalized with the training-set statistics."""
    x = torch.from_numpy(np.array(images_u8, copy=True)).float().div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


def load_split(split: str, limit: int | None = None) -> TensorDataset:
    """Load an embedded split (``calib``: 2,000 training images; ``test``: the 10,000 test images)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown data split {split!r}; use one of {', '.join(SPLITS)}")
    asset = resources.files("mpsearch.models") / "assets" / f"fmnist_{split}.npz"
    with resources.as_file(asset) as path, np.load(path) as npz:
        images, labels = npz["images"], npz["labels"]
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"data limit must be positive, got {limit}; set it to null for all")
        images, labels = images[:limit], labels[:limit]
    return TensorDataset(normalize(images), torch.from_numpy(labels.astype(np.int64)))


def loader(split: str, batch_size: int = 500, limit: int | None = None) -> DataLoader:
    """A deterministic (unshuffled) loader over an embedded split."""
    return DataLoader(load_split(split, limit), batch_size=batch_size, shuffle=False)
