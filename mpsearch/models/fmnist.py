"""Fashion-MNIST as shipped inside the package: a calibration subset and the full test split.

The full training split is not shipped, so a model trained from the package alone (the embedded MLP,
:mod:`mpsearch.models.train_mlp`) uses the *held-out* split scheme: it trains on ``heldout_train`` (the
2,000 calibration images and test images 0..7,999) and is evaluated on ``heldout`` (test images
8,000..9,999), which no training image equals.
"""

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
#: Test images from this index on form the ``heldout`` split; those before it train the embedded MLP.
HELDOUT_START = 8000
SPLITS = ("calib", "test", "heldout", "heldout_train")


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


def _read(asset_split: str) -> tuple[np.ndarray, np.ndarray]:
    asset = resources.files("mpsearch.models") / "assets" / f"fmnist_{asset_split}.npz"
    with resources.as_file(asset) as path, np.load(path) as npz:
        return npz["images"], npz["labels"]


def load_split(split: str, limit: int | None = None) -> TensorDataset:
    """Load an embedded split, its first ``limit`` images when given.

    Splits: ``calib``, 2,000 images of the training split; ``test``, the 10,000 test images;
    ``heldout``, test images 8,000..9,999 (2,000); ``heldout_train``, ``calib`` followed by test images
    0..7,999 (10,000), the images the embedded MLP was trained on.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown data split {split!r}; use one of {', '.join(SPLITS)}")
    if split in ("calib", "test"):
        images, labels = _read(split)
    else:
        test_images, test_labels = _read("test")
        if split == "heldout":
            images, labels = test_images[HELDOUT_START:], test_labels[HELDOUT_START:]
        else:
            calib_images, calib_labels = _read("calib")
            images = np.concatenate([calib_images, test_images[:HELDOUT_START]])
            labels = np.concatenate([calib_labels, test_labels[:HELDOUT_START]])
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"data limit must be positive, got {limit}; set it to null for all")
        images, labels = images[:limit], labels[:limit]
    return TensorDataset(normalize(images), torch.from_numpy(labels.astype(np.int64)))


def loader(split: str, batch_size: int = 500, limit: int | None = None) -> DataLoader:
    """A deterministic (unshuffled) loader over an embedded split."""
    return DataLoader(load_split(split, limit), batch_size=batch_size, shuffle=False)
