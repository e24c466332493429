"""Export a candidate of a finished run, and check the exported library against the fake-quant model.

``mpsearch-export <run dir> [--label pareto-3 | --budget-ms 2.5 | --index 0]`` writes
``<run dir>/export/<label>/``:

* ``model.so`` — the candidate compiled by TVM for the run's hardware profile with the tuned
  schedules of the run's cache (``mpsearch/hardware/export_lib.py``), and ``params.npz``, its
  parameter arrays by name (the library takes ``(*inputs, *params)``, batch 1, the model's inputs
  as the manifest's ``inputs`` lists them: shapes and dtypes, e.g. int64 token ids and masks);
* ``bits.json`` — the bit-config ``{layer: [w_bits, a_bits]}``;
* ``quantized_state_dict.pt`` — per layer the integer weight codes (int8 tensors, one code per
  weight also for <= 4 bits), the per-channel weight scales, the bias and the calibrated activation
  range with its quantizer; plain tensors, dicts and numbers, so ``torch.load(weights_only=True)``
  reads it;
* ``manifest.json`` — target, profile, files with their sha256, and the verification result.

The model and its calibration are rebuilt from the run's ``config.json`` (calibration is
deterministic), so nothing but the run folder and the cache is needed. After writing, the library is
loaded back, run on the test split (every model input) and its top-1 predictions compared with the
fake-quant model's: below ``--min-agreement`` (99%) the command exits 1.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mpsearch.candidate import FLOAT_BITS, HALF_BITS, Candidate
from mpsearch.config import RunConfig
from mpsearch.errors import MPSearchError
from mpsearch.hashing import file_sha256
from mpsearch.quant.fake import (
    INPUT_MEAN,
    ActQuant,
    QuantLayer,
    act_quantizers,
    corrected_bias,
    quantize_,
    quantize_weight,
)
from mpsearch.quant.prepare import PreparedModel, call_model
from mpsearch.scoring import agreement as top1_agreement
from mpsearch.scoring import top1_hits
from mpsearch.storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

STATE_FORMAT = "mpsearch.quantized_state_dict/1"


class ExportError(MPSearchError):
    """The run folder or the requested candidate cannot be exported."""


# -- reading a finished run ----------------------------------------------------------------------


@dataclass
class RunFolder:
    """A finished run folder: its config, its candidates table and its bit-configs (read-only)."""

    path: Path
    config: RunConfig
    frame: pd.DataFrame

    @classmethod
    def load(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        if not path.is_dir():
            raise ExportError(f"run folder {str(path)!r} does not exist; give a folder under results/ "
                              "written by mpsearch")
        for name in ("config.json", "pareto.csv", "candidates"):
            if not (path / name).exists():
                raise ExportError(f"{path} has no {name}; is it a finished mpsearch run folder?")
        try:
            config = RunConfig.from_dict(json.loads((path / "config.json").read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ExportError(f"{path / 'config.json'} is not a run config ({e}); re-run mpsearch") from None
        try:
            frame = pd.read_csv(path / "pareto.csv")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ExportError(f"{path / 'pareto.csv'} is not readable ({e}); re-run mpsearch") from None
        need = {"label", "kind", "accuracy", "measured_latency_ms", "predicted_latency_ms", "weight_kib"}
        if not need <= set(frame.columns):
            raise ExportError(f"{path / 'pareto.csv'} lacks column {sorted(need - set(frame.columns))[0]!r}; "
                              "re-run mpsearch")
        return cls(path, config, frame)

    @property
    def labels(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "candidates").glob("*.json"))

    def candidate(self, label: str) -> Candidate:
        file = self.path / "candidates" / f"{label}.json"
        if label not in self.labels:
            raise ExportError(f"run {self.path.name} has no candidate {label!r}; its candidates are: "
                              f"{', '.join(self.labels)}")
        return Candidate.from_json(file.read_text())

    def front(self, kinds: Sequence[str] = ("pareto",)) -> pd.DataFrame:
        """The searched front's rows of ``pareto.csv``, in its order (fastest first); ``kinds`` may add
        e.g. ``"ilp"``, the exact-ILP picks."""
        return self.frame[self.frame["kind"].isin(list(kinds))].reset_index(drop=True)

    def cost_table(self) -> Any:
        """The run's :class:`~mpsearch.hardware.base.LayerCostTable`, or None if it was not stored."""
        from mpsearch.hardware.base import LayerCostTable

        file = self.path / "cost_table.json"
        return LayerCostTable.from_json(file.read_text()) if file.is_file() else None


def latency_ms(row: Mapping[str, Any]) -> tuple[float, bool]:
    """A row's latency: measured when it was measured, else the cost table's prediction; and which."""
    meas = row.get("measured_latency_ms")
    if meas is not None and np.isfinite(meas):
        return float(meas), True
    pred = row.get("predicted_latency_ms")
    return (float(pred) if pred is not None and np.isfinite(pred) else float("nan")), False


def best_within(frame: pd.DataFrame, latency_budget_ms: float | None = None,
                weight_budget_kib: float | None = None) -> pd.Series | None:
    """The most accurate row within the budgets (latency measured where measured); ties: the faster.

    None when no row fits. Rows without an accuracy are never picked.
    """
    best, best_key = None, None
    for _, row in frame.iterrows():
        lat, _ = latency_ms(row)
        acc = row.get("accuracy")
        if acc is None or not np.isfinite(acc) or not np.isfinite(lat):
            continue
        if latency_budget_ms is not None and lat > latency_budget_ms:
            continue
        if weight_budget_kib is not None and row["weight_kib"] > weight_budget_kib:
            continue
        key = (-float(acc), lat)
        if best_key is None or key < best_key:
            best, best_key = row, key
    return best


def select_label(run: RunFolder, label: str | None = None, budget_ms: float | None = None,
                 index: int | None = None) -> str:
    """The label to export: given, the ``index``-th candidate of the front (fastest first), or the
    most accurate front candidate within ``budget_ms`` (the most accurate overall when no choice is given)."""
    if sum(x is not None for x in (label, budget_ms, index)) > 1:
        raise ExportError("give at most one of --label, --budget-ms and --index")
    if label is not None:
        run.candidate(label)  # exists?
        return label
    front = run.front()
    if front.empty:
        raise ExportError(f"run {run.path.name} has no front candidates in pareto.csv; use --label fp32|int8")
    if index is not None:
        if not 0 <= index < len(front):
            raise ExportError(f"--index {index} is out of range; the front of {run.path.name} has {len(front)} "
                              f"candidates, 0 (fastest) to {len(front) - 1}")
        return str(front.iloc[index]["label"])
    if budget_ms is not None and not budget_ms > 0:
        raise ExportError(f"--budget-ms {budget_ms} must be positive")
    row = best_within(front, budget_ms)
    if row is None:
        fastest = min((latency_ms(r)[0], r["label"]) for _, r in front.iterrows())
        raise ExportError(f"no front candidate of {run.path.name} runs within {budget_ms:g} ms (the fastest, "
                          f"{fastest[1]}, takes {fastest[0]:.3f} ms); raise --budget-ms")
    return str(row["label"])


# -- the quantized PyTorch state dict ------------------------------------------------------------


def quantized_state_dict(prepared: PreparedModel, candidate: Candidate,
                         ranges: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """Integer weights, scales and activation quantizers of every layer, as plain tensors and numbers.

    Per layer: ``weight`` (int8 codes, or the float32 weight at 32 bits), ``weight_scale`` (float32
    per output channel; None at 32 bits), ``bias`` (less the weight rounding's mean output shift where the
    run corrects it: :func:`~mpsearch.quant.fake.corrected_bias`), ``w_bits``, ``a_bits``, ``act_range`` (the
    calibrated ``[lo, hi]``) and the activation quantizer it implies (``act_scale``, ``act_signed``,
    ``act_qmin``, ``act_qmax``, ``act_zero_point`` (0 unless ``search.act_scheme=asymmetric``: then
    ``x̂ = (q - act_zero_point) · act_scale``); None at 32 bits). ``other`` holds the BN-folded model's remaining
    state (anything that is not a quantizable layer's weight or bias).
    """
    candidate.validate(prepared.layer_names)
    gm = prepared.graph_module
    acts = act_quantizers(candidate, ranges)
    layers: dict[str, Any] = {}
    owned: set[str] = set()
    for name, (w_bits, a_bits) in candidate.items():
        module = gm.get_submodule(name)
        weight = module.weight.detach().float()
        bias = corrected_bias(module, w_bits)
        bias = bias if bias is not None else torch.zeros(weight.shape[0])
        owned.update({f"{name}.weight", f"{name}.bias", f"{name}.{INPUT_MEAN}"})
        if w_bits >= FLOAT_BITS:
            codes, scale = weight.clone(), None
        elif w_bits == HALF_BITS:  # fp16 weights, stored as the kernels take them
            codes, scale = weight.half(), None
        else:
            codes, scale = quantize_weight(weight, w_bits)
        act = acts[name]
        lo, hi = ranges.get(name, (float("nan"), float("nan")))
        layers[name] = {
            "w_bits": int(w_bits), "a_bits": int(a_bits), "weight": codes.contiguous(),
            "weight_scale": None if scale is None else scale.contiguous(), "bias": bias.clone(),
            "act_range": torch.tensor([lo, hi], dtype=torch.float32),
            "act_scale": None if act is None else float(act.scale),
            "act_signed": None if act is None else bool(act.signed),
            "act_qmin": None if act is None or act.half else int(act.qmin),
            "act_qmax": None if act is None or act.half else int(act.qmax),
            "act_zero_point": None if act is None or act.half else int(act.zero_point),  # x̂ = (q - z)·scale
        }
    other = {k: v.detach().clone() for k, v in gm.state_dict().items() if k not in owned}
    return {"format": STATE_FORMAT, "input_shape": list(prepared.input_shape), "inputs": input_records(prepared),
            "layers": layers, "other": other}


def input_records(prepared: PreparedModel) -> list[dict[str, Any]]:
    """The model's inputs as plain data, ``[{"shape": [1, ...], "dtype": "int64"}, ...]`` (batch 1)."""
    return [{"shape": [1, *spec.shape[1:]], "dtype": spec.dtype} for spec in prepared.inputs]


def model_from_quantized_state(prepared: PreparedModel, state: Mapping[str, Any]) -> nn.Module:
    """Rebuild the fake-quant model from :func:`quantized_state_dict` alone (weights dequantized from
    the stored codes): the proof that the state dict holds everything the quantized model needs."""
    if state.get("format") != STATE_FORMAT:
        raise ExportError(f"not an mpsearch quantized state dict (format {state.get('format')!r}, "
                          f"expected {STATE_FORMAT!r})")
    model = prepared.copy_module()
    model.load_state_dict(dict(state["other"]), strict=False)
    for name, rec in state["layers"].items():
        layer = model.get_submodule(name)
        act = None
        if rec["act_scale"] is not None:
            act = ActQuant(int(rec["a_bits"]), float(rec["act_scale"]), bool(rec["act_signed"]),
                           int(rec.get("act_zero_point") or 0))
        quant = QuantLayer(layer, int(rec["w_bits"]), act)
        if rec["weight_scale"] is None:
            weight_q = rec["weight"].float()
        else:
            shape = (-1,) + (1,) * (rec["weight"].dim() - 1)
            weight_q = rec["weight"].float() * rec["weight_scale"].view(shape)
        quant.weight_q = weight_q.clone()
        quant.bias_q = rec["bias"].float().clone()  # as stored: corrected for the rounding, if it was
        model.set_submodule(name, quant)
    return model.eval()


# -- export ----------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    out_dir: Path
    label: str
    agreement: float | None  # top-1 agreement of the library with the fake-quant model; None: not run here
    samples: int
    manifest: dict[str, Any] = field(default_factory=dict)


def _target_dict(target: str) -> Any:
    try:
        return json.loads(target)
    except json.JSONDecodeError:
        return target


def rebuild(cfg: RunConfig) -> tuple[PreparedModel, dict[str, tuple[float, float]]]:
    """The run's BN-folded model and activation ranges, recomputed as the pipeline computed them."""
    from mpsearch import pipeline
    from mpsearch.quant.calibration import calibrate_for
    from mpsearch.quant.prepare import as_inputs, prepare_model

    model = pipeline.build_model(cfg)
    calib = pipeline.batches(pipeline.load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
    prepared = prepare_model(model, as_inputs(cfg.model.input_specs()))
    return prepared, calibrate_for(prepared.graph_module, prepared.layer_names, calib, cfg.search)


def learned_weights(run: RunFolder, label: str, candidate: Candidate, prepared: PreparedModel,
                    ranges: Mapping[str, tuple[float, float]]) -> tuple[PreparedModel, dict, str]:
    """The model the run measured for ``label``: with the weights and ranges learned for it
    (``candidates/<label>.learned.pt``, learned PTQ / QAT-KD) where the run learned them, else as
    rebuilt (round to nearest). Returns the model, its ranges and how its weights were quantized."""
    from mpsearch.quant.learned import LearnedModel

    path = run.path / "candidates" / f"{label}.learned.pt"
    if not path.is_file():
        return prepared, dict(ranges), "round to nearest"
    learned = LearnedModel.from_bytes(path.read_bytes())
    if learned.candidate_key != candidate.key():
        raise ExportError(f"{run.path.name}/candidates/{path.name} was learned for another bit-config than "
                          f"{label}'s; re-run mpsearch")
    return learned.apply(prepared), dict(learned.ranges), learned.method


def _check_reproduced(run: RunFolder, label: str, accuracy: float) -> None:
    """The rebuilt fake-quant model must score what the run recorded for ``label`` on the same split,
    or the model, data or calibration changed since the run and the export would not be what was measured."""
    rows = run.frame[run.frame["label"] == label]
    if rows.empty or not np.isfinite(rows.iloc[0]["accuracy"]):
        return
    recorded = float(rows.iloc[0]["accuracy"])
    if abs(recorded - accuracy) > 1e-6:
        raise ExportError(f"the model rebuilt from {run.path.name}/config.json scores {100 * accuracy:.2f}% on the "
                          f"test split, but the run recorded {100 * recorded:.2f}% for {label}: the model, data or "
                          "calibration changed since the run; re-run mpsearch first")


def export_run(run_dir: str | Path, label: str | None = None, budget_ms: float | None = None,
               index: int | None = None, limit: int | None = None, min_agreement: float = 0.99,
               progress: bool = False) -> ExportResult:
    """Export one candidate of the run in ``run_dir`` and verify the library (see the module docstring)."""
    from mpsearch import pipeline
    from mpsearch.hardware import export_lib

    run = RunFolder.load(run_dir)
    label = select_label(run, label, budget_ms, index)
    cfg = run.config
    profile = pipeline.configured_profile(cfg)
    prepared, ranges = rebuild(cfg)
    candidate = run.candidate(label).validate(prepared.layer_names)
    # what the run reported for a candidate it learned PTQ / QAT-KD for is the learned model: export that
    prepared, ranges, weights = learned_weights(run, label, candidate, prepared, ranges)
    out_dir = run.path / "export" / label
    log.info("exporting %s (%s, %s) of %s for %s", label, candidate.describe(), weights, run.path.name, profile.name)
    test = pipeline.batches(pipeline.load_data(cfg, "test", limit if limit is not None else cfg.data.test_samples),
                            cfg.data.batch_size)
    fake_quant = quantize_(prepared.copy_module(), candidate, ranges).eval()
    with torch.no_grad():  # the same batches and arithmetic as the run's evaluation
        ref = np.concatenate([call_model(fake_quant, xb).numpy() for xb, _ in test])
    labels = np.concatenate([yb.numpy() for _, yb in test])
    if limit is None or limit == cfg.data.test_samples:
        hits, decisions = top1_hits(ref, labels)
        _check_reproduced(run, label, hits / decisions)

    # manifest.json, written last, is what marks an export finished: a new export into this folder
    # first removes the old one, so an export killed half-way is never taken for a finished one.
    (out_dir / "manifest.json").unlink(missing_ok=True)
    start = time.perf_counter()
    built = export_lib.build_tuned(profile, Path(cfg.cache_dir), prepared, candidate, ranges, out_dir, progress)
    compile_s = time.perf_counter() - start
    atomic_write_text(out_dir / "bits.json", json.dumps(candidate.to_dict(), indent=1) + "\n")
    state = quantized_state_dict(prepared, candidate, ranges)
    state.update({"model": cfg.model.display_name(), "candidate": label, "hw_profile": profile.name})
    buf = io.BytesIO()
    torch.save(state, buf)
    state_path = atomic_write_bytes(out_dir / "quantized_state_dict.pt", buf.getvalue())

    # Verify what is on disk, not what is in memory: the library and parameters are loaded back.
    agreement, n, max_diff = None, 0, None
    if profile.device == "local" and not profile.is_gpu:
        params = export_lib.load_params(built.params, built.param_names)
        rows = [xb if isinstance(xb, tuple) else (xb,) for xb, _ in test]
        x = [np.concatenate([r[i].numpy() for r in rows]) for i in range(len(prepared.inputs))]
        out = export_lib.run_library(built.library, params, x, threads=profile.resolved_threads(),
                                     specs=prepared.inputs)
        n = len(x[0])
        agreement = top1_agreement(out, ref)
        max_diff = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
        log.info("library vs fake-quant model on %d test inputs: top-1 agreement %.2f%%, max relative "
                 "output difference %.2g", n, 100 * agreement, max_diff)
    else:
        log.warning("profile %s runs on %s: the library was not loaded back here (run it on the device)",
                    profile.name, profile.device_address())

    files = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for p in (built.library, built.params, out_dir / "bits.json", state_path)}
    manifest = {
        "run": run.path.name, "candidate": label, "candidate_key": candidate.key(),
        "description": candidate.describe(), "weights": weights, "model": cfg.model.display_name(),
        "input_shape": list(built.input_shape),
        "inputs": input_records(prepared),
        "hw_profile": profile.name, "profile": profile.to_dict(), "target": _target_dict(built.target),
        "tvm": export_lib.tvm_version(), "threads": profile.resolved_threads(),
        "library": {"file": built.library.name, "params_file": built.params.name, "params": built.param_names,
                    "batch": 1, "kernels_tuned_during_export": built.tuned_now},
        "files": files,
        "verification": {"test_samples": n, "top1_agreement": agreement, "min_agreement": min_agreement,
                         "max_relative_output_difference": max_diff,
                         "passed": None if agreement is None else agreement >= min_agreement},
        "compile_seconds": round(compile_s, 2),
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1, default=str) + "\n")
    return ExportResult(out_dir, label, agreement, n, manifest)


def main(argv: Sequence[str] | None = None) -> int:
    """``mpsearch-export``: exit 0 when exported and verified, 1 below the agreement bar, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="mpsearch-export", description="Export a candidate of a finished mpsearch run: TVM library, "
        "bit-config, quantized state dict; then check the library against the fake-quant model.")
    parser.add_argument("run_dir", help="the run folder (results/<run>/)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--label", help="a candidate label (candidates/<label>.json), e.g. pareto-3 or int8")
    choice.add_argument("--budget-ms", type=float, help="the most accurate front candidate within this latency")
    choice.add_argument("--index", type=int, help="the index-th front candidate, 0 = fastest")
    parser.add_argument("--limit", type=int, default=None, help="test inputs to verify on (default: the run's)")
    parser.add_argument("--min-agreement", type=float, default=0.99, help="top-1 agreement needed (default 0.99)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        result = export_run(args.run_dir, args.label, args.budget_ms, args.index, args.limit, args.min_agreement,
                            progress=not args.quiet)
    except MPSearchError as e:
        print(f"mpsearch-export: error: {e}", file=sys.stderr)
        return 2
    if result.agreement is None:
        print(f"exported {result.label} to {result.out_dir} (not verified: the profile's device is not this machine)")
        return 0
    verdict = "ok" if result.agreement >= args.min_agreement else "FAILED"
    print(f"exported {result.label} to {result.out_dir}: library vs fake-quant top-1 agreement "
          f"{100 * result.agreement:.2f}% on {result.samples} test inputs ({verdict}, need "
          f"{100 * args.min_agreement:.0f}%)")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
