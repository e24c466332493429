"""Model and data factories, addressed from the config as ``"module:function"`` strings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.errors import ConfigError
from mpsearch.models.fmnist import load_split
from mpsearch.models.mlp import MLP
from mpsearch.models.resnet import resnet18, resnet20


def resolve(spec: str, what: str) -> Callable[..., Any]:
    """Import ``"package.module:function"``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} factory {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{what} factory {spec!r}: cannot import {module_name} ({e}); check the name") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{what} factory {spec!r}: {module_name} has no callable {attr!r}")
    return fn


def load_state_dict(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a plain state dict (``weights_only=True``: no pickled code runs) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist; set model.checkpoint to a state-dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ConfigError(f"checkpoint {str(path)!r} is not a plain state dict ({type(e).__name__}); "
                          "save it with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint {str(path)!r} is not a plain state dict of tensors; "
                          "save it with torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {str(path)!r} does not match the model "
                          f"({str(e).splitlines()[0]}); check model.factory") from None
    return model


def resnet20_fmnist() -> nn.Module:
    """The embedded default model, with its trained weights."""
    model = resnet20()
    asset = resources.files("mpsearch.models") / "assets" / "resnet20_fmnist.pt"
    with resources.as_file(asset) as path:
        return load_state_dict(model, path).eval()


def mlp_fmnist() -> nn.Module:
    """The embedded weight-bound MLP (:class:`~mpsearch.models.mlp.MLP`), its weights stored in float16 and
    loaded into a float32 model. Trained on the ``heldout_train`` images (see :func:`fmnist_heldout_split`)."""
    model = MLP()
    asset = resources.files("mpsearch.models") / "assets" / "mlp_fmnist.pt"
    with resources.as_file(asset) as path:
        return load_state_dict(model, path).eval()


def resnet18_random(seed: int = 0) -> nn.Module:
    """ResNet-18 (3x32x32 input) with seeded random weights: a larger CNN for latency benchmarks,
    where the weights' values do not matter (its accuracy is meaningless)."""
    torch.manual_seed(seed)
    return resnet18().eval()


def fmnist_split(split: str, limit: int | None = None) -> torch.utils.data.Dataset:
    return load_split(split, limit)


#: The pipeline's split names -> the embedded splits of the held-out scheme.
_HELDOUT_SPLITS = {"calib": "calib", "test": "heldout"}


def fmnist_heldout_split(split: str, limit: int | None = None) -> torch.utils.data.Dataset:
    """Fashion-MNIST for a model trained on the embedded images (``mlp_fmnist``): ``calib`` is the 2,000
    calibration images, ``test`` the 2,000 held-out test images 8,000..9,999. Both its training images
    (calib and test images 0..7,999) and the held-out ones come from the package; the full training split
    is not shipped."""
    if split not in _HELDOUT_SPLITS:
        raise ConfigError(f"unknown data split {split!r} for fmnist_heldout; use one of "
                          f"{', '.join(_HELDOUT_SPLITS)}")
    return load_split(_HELDOUT_SPLITS[split], limit)
