"""The embedded weight-bound MLP and its held-out Fashion-MNIST split: the factory loads the float16
checkpoint with the documented accuracy, the held-out images are not training images, and
``model=mlp_fmnist data=fmnist_heldout`` composes."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest
import torch
from hydra import compose, initialize_config_dir

from mpsearch.cli import CONF_DIR, to_run_config
from mpsearch.config import validate
from mpsearch.errors import ConfigError
from mpsearch.models.fmnist import HELDOUT_START, load_split
from mpsearch.models.registry import fmnist_heldout_split, mlp_fmnist, resolve
from mpsearch.quant.prepare import prepare_model

ASSETS = resources.files("mpsearch.models") / "assets"
META = json.loads((ASSETS / "mlp_fmnist.json").read_text())


def _hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images]


def test_factory_loads_float16_weights_with_the_documented_accuracy() -> None:
    state = torch.load(ASSETS / "mlp_fmnist.pt", map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert (ASSETS / "mlp_fmnist.pt").stat().st_size <= 12_000_000
    model = mlp_fmnist()
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == 5_942_794
    x, y = fmnist_heldout_split("test").tensors
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(META["heldout_top1"], abs=1e-3) and acc > 0.85


def test_the_prepared_graph_has_four_named_linear_layers() -> None:
    prepared = prepare_model(mlp_fmnist(), (1, 1, 28, 28))
    assert prepared.layer_names == ["fc1", "fc2", "fc3", "head"]


def test_heldout_split_is_disjoint_from_the_training_images() -> None:
    calib, test = load_split("calib"), load_split("test")
    train, heldout = load_split("heldout_train"), fmnist_heldout_split("test")
    assert (len(calib), len(test), len(train), len(heldout)) == (2_000, 10_000, 10_000, 2_000)
    assert torch.equal(heldout.tensors[0], test.tensors[0][HELDOUT_START:])
    assert torch.equal(train.tensors[0][:2_000], calib.tensors[0])
    assert torch.equal(train.tensors[0][2_000:], test.tensors[0][:HELDOUT_START])
    assert torch.equal(fmnist_heldout_split("calib").tensors[0], calib.tensors[0])
    assert not set(_hashes(heldout.tensors[0])) & set(_hashes(train.tensors[0]))
    assert len(fmnist_heldout_split("test", 100)) == 100


def test_unknown_split_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown data split 'train'.*calib, test$"):
        fmnist_heldout_split("train")
    with pytest.raises(ConfigError, match="unknown data split 'train'.*heldout_train"):
        load_split("train")


def test_mlp_config_composes_and_validates() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_run_config(compose(config_name="config", overrides=["model=mlp_fmnist", "data=fmnist_heldout"]))
    validate(cfg)
    assert cfg.model.name == "mlp_fmnist" and cfg.data.name == "fmnist_heldout"
    assert cfg.default_run_name().startswith("mlp_fmnist-host_cpu-")
    assert isinstance(resolve(cfg.model.factory, "model")(), torch.nn.Module)
    assert len(resolve(cfg.data.factory, "data")("test", cfg.data.test_samples)) == 2_000
