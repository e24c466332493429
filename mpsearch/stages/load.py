"""Stage ``load``: the model, its data, the prepared (BN-folded, traced) graph, layer groups and a given
candidate, each checked before any expensive work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mpsearch.candidate import Candidate
from mpsearch.config import DataConfig, ModelConfig, RunConfig
from mpsearch.errors import ConfigError
from mpsearch.models.registry import load_state_dict, resolve
from mpsearch.quant.prepare import PreparedModel, as_inputs, call_model, prepare_model
from mpsearch.scoring import layout
from mpsearch.search.groups import check_candidate, layer_groups

Batch = tuple[Any, torch.Tensor]


@dataclass
class Loaded:
    """What the ``load`` stage hands on.

    Attributes:
        model: The user's model (eval mode), as the factory and checkpoint gave it.
        prepared: Its BN-folded, traced form that every later stage quantizes.
        calib: Calibration batches ``(inputs, label)``.
        test: Test batches.
        groups: Layers that take one precision (tied weights, ``search.groups``, residual adds).
        given: ``candidate`` read and checked, or None.
    """

    model: torch.nn.Module
    prepared: PreparedModel
    calib: list[Batch]
    test: list[Batch]
    groups: list[list[str]]
    given: Candidate | None

    @property
    def layers(self) -> list[str]:
        return self.prepared.layer_names


def build_model(cfg: RunConfig) -> torch.nn.Module:
    return _build(cfg.model)


def _build(model_cfg: ModelConfig) -> torch.nn.Module:
    model = resolve(model_cfg.factory, "model")()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model factory {model_cfg.factory!r} returned {type(model).__name__}, not an nn.Module")
    if model_cfg.checkpoint:
        load_state_dict(model, model_cfg.checkpoint)
    return model.eval()


def load_data(cfg: RunConfig, split: str, limit: int | None) -> Dataset:
    return _split(cfg.data, split, limit)


def _split(data_cfg: DataConfig, split: str, limit: int | None) -> Dataset:
    ds = resolve(data_cfg.factory, "data")(split, limit)
    if len(ds) == 0:
        raise ConfigError(f"data split {split!r} from {data_cfg.factory!r} is empty; give it samples")
    return ds


def batches(ds: Dataset, batch_size: int) -> list[tuple[Any, torch.Tensor]]:
    """``(inputs, label)`` batches; ``inputs`` is a Tensor, or a tuple of Tensors for a several-input
    model (called as ``model(*inputs)``; the collated list becomes a tuple)."""
    out = []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        x = tuple(x) if isinstance(x, (list, tuple)) else x
        out.append((x[0] if isinstance(x, tuple) and len(x) == 1 else x, y))  # one input: a plain Tensor
    return out


def check_data(prepared: PreparedModel, batch: tuple[Any, Any], factory: str) -> None:
    """Raise :class:`ConfigError` when a data batch does not match the declared model inputs."""
    x, y = batch
    given = list(x) if isinstance(x, tuple) else [x]
    declared = prepared.inputs
    if len(given) != len(declared) or not all(isinstance(t, torch.Tensor) for t in given):
        kinds = ", ".join(type(t).__name__ for t in given)
        raise ConfigError(f"data.factory {factory!r} yields {len(given)} input(s) ({kinds}) per sample, the model "
                          f"declares {len(declared)} (model.inputs / model.input_shape); make each sample "
                          "((input, ...), label) with one tensor per declared input")
    for i, (t, spec) in enumerate(zip(given, declared)):
        if str(t.dtype).removeprefix("torch.") != spec.dtype or tuple(t.shape[1:]) != tuple(spec.shape[1:]):
            raise ConfigError(f"data.factory {factory!r}: input {i} is {str(t.dtype).removeprefix('torch.')} "
                              f"{list(t.shape[1:])} per sample, model.inputs[{i}] declares {spec.dtype} "
                              f"{list(spec.shape[1:])}; fix the data factory or model.inputs")
    if not isinstance(y, torch.Tensor) or len(y) != len(given[0]):
        raise ConfigError(f"data.factory {factory!r}: labels are not one tensor entry per sample; make each "
                          "sample ((input, ...), label)")
    with torch.no_grad():  # the search scores top-1 of logits against labels: say so now, not after the search
        out = call_model(prepared.graph_module, x)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model returns a {type(out).__name__} for a batch of {len(y)}; return the logits "
                          "tensor")
    layout(out.shape, y.shape)  # (batch, classes) and (batch,), or (batch, positions, vocab) and (batch, positions)


def preflight(prepared: PreparedModel) -> None:
    """Lower the FP32 model once through TVM's importer: an op it cannot take is one line now, not after
    calibration and sensitivity. Skipped where TVM is not installed (fake backends)."""
    try:
        from mpsearch.hardware.lowering import lower
    except ImportError:
        return
    lower(prepared, Candidate.uniform(prepared.layer_names, 32, 32), {}, batch=1)


def load_candidate(path: str, layers: list[str], groups: list[list[str]] = ()) -> Candidate:
    """Read a bit-config JSON and check it names exactly the model's layers with supported bits, one
    precision per layer group."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"candidate file {path!r} does not exist; give a JSON file {{layer: [w_bits, a_bits]}}")
    cand = Candidate.from_json(file.read_text()).validate(layers)
    check_candidate(cand, groups)
    return cand


def load(model_cfg: ModelConfig, data_cfg: DataConfig, groups: Sequence[Sequence[str]] = (),
         group_residual: bool = False, candidate: str | None = None) -> Loaded:
    """Build the model, load both splits, prepare the graph and check data, ops and ``candidate`` against it.

    Args:
        model_cfg: ``cfg.model``.
        data_cfg: ``cfg.data``.
        groups: ``search.groups``, layers the user ties to one precision.
        group_residual: ``search.group_residual``.
        candidate: ``cfg.candidate``, a bit-config JSON to evaluate beside the front, or None.
    """
    model = _build(model_cfg)
    calib = batches(_split(data_cfg, "calib", data_cfg.calib_samples), data_cfg.batch_size)
    test = batches(_split(data_cfg, "test", data_cfg.test_samples), data_cfg.batch_size)
    prepared = prepare_model(model, as_inputs(model_cfg.input_specs()))
    check_data(prepared, calib[0], data_cfg.factory)
    check_data(prepared, test[0], data_cfg.factory)
    preflight(prepared)
    layers = prepared.layer_names
    # Layers that take one precision: tied weights (found on the user's model), search.groups, residual adds.
    tied = layer_groups(model, prepared.graph_module, layers, groups, group_residual)
    given = load_candidate(candidate, layers, tied) if candidate else None
    return Loaded(model, prepared, calib, test, tied, given)
