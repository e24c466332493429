"""A depthwise-separable CNN and a transformer encoder run calibrate → sensitivity → search → report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mpsearch.pipeline import run
from mpsearch.quant.prepare import prepare_model
from mpsearch.testing import TableBackend, tiny_run_config
from tests.sensitivity.other_models import DepthwiseSeparableCNN, TinyTransformer


def _backend(profile, cache_dir, progress):
    return TableBackend()


def test_prepare_finds_the_layers():
    dw = prepare_model(DepthwiseSeparableCNN(), (1, 1, 8, 8))
    assert dw.layer_names == ["stem", "dw1", "pw1", "dw2", "pw2", "fc"]
    assert dw.layers[1].weight_shape == (8, 1, 3, 3)  # depthwise: one input channel per group
    tf = prepare_model(TinyTransformer(), (1, 1, 8, 8))
    assert tf.layer_names == ["embed", "block.q", "block.k", "block.v", "block.proj", "block.fc1", "block.fc2",
                              "head"]
    assert tf.layers[1].in_shape == (1, 8, 16)  # linear layers on token sequences
    assert tf.layers[1].macs == 8 * 16 * 16


@pytest.mark.slow  # trains the model first; ~10 s of CPU each
@pytest.mark.parametrize("factory", ["depthwise_cnn", "tiny_transformer"])
def test_runs_through_search_and_report(tmp_path: Path, factory: str):
    cfg = tiny_run_config(tmp_path, model__name=factory, model__factory=f"tests.sensitivity.other_models:{factory}",
                          data__factory="tests.sensitivity.other_models:split", search__n_trials=20,
                          search__measure_front=2, search__proxy_validation=5,
                          search__proxy_estimators=["fisher", "delta_loss"])
    out = run(cfg, _backend)
    layers = out.summary.layers
    sig = out.summary.sensitivity
    assert set(sig["hessian_trace"]) == set(layers) and set(sig["fisher_weight"]) == set(layers)
    assert all(v > 0 for v in sig["fisher_weight"].values())
    val = out.summary.proxy_validation
    assert val["n"] == 5 and set(val["spearman"]) == {"hutchinson", "fisher", "delta_loss"}
    df = pd.read_csv(out.run_dir / "pareto.csv")
    assert {"fp32", "int8"} <= set(df["label"]) and df["accuracy"].between(0, 1).all()
    fp32 = df.loc[df["label"] == "fp32", "accuracy"].item()
    assert fp32 > 0.45  # the model learned the 3-class task (chance is 1/3)
    assert (out.run_dir / "report.md").is_file()
