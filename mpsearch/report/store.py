"""``summary.json``: the whole :class:`RunSummary` as plain JSON, so a report can be rebuilt without recomputing.

The file is the report's single source of truth: every report file is drawn from it, and
``mpsearch-report <run dir>`` reads it back. Non-finite floats are stored as ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd

from mpsearch.candidate import Candidate
from mpsearch.errors import MPSearchError
from mpsearch.report.tables import EvaluatedCandidate, ReportError, RunSummary
from mpsearch.storage import atomic_write_text

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
#: Bumped when a stored field changes meaning; older files are refused with a clear message.
FORMAT_VERSION = 1


def to_plain(value: Any) -> Any:
    """Convert a value to JSON/YAML-safe plain data; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, np.generic):
        return to_plain(value.item())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or value is pd.NA or isinstance(value, (str, int, bool)):
        return None if value is pd.NA else value
    logger.debug("value of type %s stored as its string", type(value).__name__)
    return str(value)


def _frame_to_plain(frame: pd.DataFrame | None) -> dict[str, Any] | None:
    if frame is None:
        return None
    return {
        "index_name": frame.index.name,
        "index": [str(i) for i in frame.index],
        "columns": [str(c) for c in frame.columns],
        "data": to_plain(frame.to_numpy(dtype=float).tolist()),
    }


def _frame_from_plain(data: dict[str, Any] | None) -> pd.DataFrame | None:
    if data is None:
        return None
    rows = [[np.nan if v is None else float(v) for v in row] for row in data["data"]]
    index = pd.Index(data["index"], name=data.get("index_name"))
    return pd.DataFrame(rows, index=index, columns=list(data["columns"]), dtype=float)


def summary_to_dict(summary: RunSummary) -> dict[str, Any]:
    """The summary as plain JSON-safe data (``run_dir`` is stored but replaced on load)."""
    return {
        "format": FORMAT_VERSION,
        "run_dir": str(summary.run_dir),
        "model": summary.model,
        "hw_profile": summary.hw_profile,
        "device": summary.device,
        "layers": list(summary.layers),
        "layer_macs": to_plain(summary.layer_macs),
        "layer_params": to_plain(summary.layer_params),
        "candidates": [
            {
                "label": ev.label,
                "candidate": ev.candidate.to_dict(),
                "kind": ev.kind,
                "proxy": to_plain(float(ev.proxy)),
                "predicted_latency_ms": to_plain(ev.predicted_latency_ms),
                "measured_latency_ms": to_plain(ev.measured_latency_ms),
                "latency_std_ms": to_plain(ev.latency_std_ms),
                "weight_bytes": int(ev.weight_bytes),
                "accuracy": to_plain(ev.accuracy),
                "trial": None if ev.trial is None else int(ev.trial),
                "activation_bytes": None if ev.activation_bytes is None else int(ev.activation_bytes),
                "accuracy_rtn": to_plain(ev.accuracy_rtn),
            }
            for ev in summary.candidates
        ],
        "layer_latency_ms": _frame_to_plain(summary.layer_latency_ms),
        "config": to_plain(summary.config),
        "timings_s": to_plain(summary.timings_s),
        "versions": to_plain(summary.versions),
        "notes": list(summary.notes),
        "sensitivity": to_plain(summary.sensitivity),
        "proxy_validation": to_plain(summary.proxy_validation),
        "search_fronts": to_plain(summary.search_fronts),
        "latency_source": summary.latency_source,
        "layer_groups": [list(g) for g in summary.layer_groups],
        "peers": to_plain(summary.peers),
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _peers(data: Any) -> dict[str, Any] | None:
    """The stored peers (:attr:`RunSummary.peers`), checked for the fields the report reads."""
    if data is None:
        return None
    if not isinstance(data, Mapping) or not isinstance(data.get("rows"), list) \
            or not all(isinstance(r, Mapping) and "method" in r for r in data["rows"]):
        raise ValueError("peers must be an object with a list of rows, each with a method")
    return dict(data)


def summary_from_dict(data: Mapping[str, Any], run_dir: str | Path) -> RunSummary:
    """Rebuild a :class:`RunSummary` from :func:`summary_to_dict` output.

    Args:
        data: The stored dictionary.
        run_dir: Where the report goes now (the folder may have moved since the run).

    Raises:
        ReportError: A field is missing or has the wrong shape.
    """
    if not isinstance(data, Mapping):
        raise ReportError("summary must be a JSON object; re-run the search to rewrite it")
    version = data.get("format")
    if version != FORMAT_VERSION:
        raise ReportError(f"summary format {version!r} is not {FORMAT_VERSION}; re-run the search with this "
                          "mpsearch version to rewrite it")
    try:
        candidates = [
            EvaluatedCandidate(
                label=str(c["label"]),
                candidate=Candidate(c["candidate"]),
                kind=str(c["kind"]),
                proxy=float("nan") if c["proxy"] is None else float(c["proxy"]),
                predicted_latency_ms=_float(c["predicted_latency_ms"]),
                measured_latency_ms=_float(c["measured_latency_ms"]),
                latency_std_ms=_float(c["latency_std_ms"]),
                weight_bytes=int(c["weight_bytes"]),
                accuracy=_float(c["accuracy"]),
                trial=None if c["trial"] is None else int(c["trial"]),
                activation_bytes=None if c.get("activation_bytes") is None else int(c["activation_bytes"]),
                accuracy_rtn=_float(c.get("accuracy_rtn")),
            )
            for c in data["candidates"]
        ]
        return RunSummary(
            run_dir=Path(run_dir),
            model=str(data["model"]),
            hw_profile=str(data["hw_profile"]),
            device=str(data["device"]),
            layers=[str(n) for n in data["layers"]],
            layer_macs={str(k): int(v) for k, v in data["layer_macs"].items()},
            layer_params={str(k): int(v) for k, v in data["layer_params"].items()},
            candidates=candidates,
            layer_latency_ms=_frame_from_plain(data.get("layer_latency_ms")),
            config=dict(data.get("config") or {}),
            timings_s={str(k): float(v) for k, v in (data.get("timings_s") or {}).items()},
            versions={str(k): str(v) for k, v in (data.get("versions") or {}).items()},
            notes=[str(n) for n in data.get("notes") or []],
            sensitivity={
                str(sig): {str(k): (np.nan if v is None else float(v)) for k, v in vals.items()}
                for sig, vals in (data.get("sensitivity") or {}).items()
            },
            proxy_validation=data.get("proxy_validation"),
            search_fronts={str(k): list(v) for k, v in (data.get("search_fronts") or {}).items()},
            latency_source=str(data.get("latency_source") or "measured"),
            layer_groups=[[str(n) for n in g] for g in data.get("layer_groups") or []],
            peers=_peers(data.get("peers")),
        )
    except KeyError as e:
        raise ReportError(f"summary lacks the field {e.args[0]!r}; re-run the search to rewrite it") from None
    except (TypeError, ValueError, AttributeError, MPSearchError) as e:
        raise ReportError(f"summary has a malformed field ({e}); re-run the search to rewrite it") from None


def save_summary(summary: RunSummary) -> Path:
    """Write ``summary.json`` into ``summary.run_dir`` atomically; returns its path."""
    text = json.dumps(summary_to_dict(summary), indent=1, allow_nan=False) + "\n"
    return atomic_write_text(Path(summary.run_dir) / SUMMARY_FILE, text)


def load_summary(run_dir: str | Path) -> RunSummary:
    """Read ``<run_dir>/summary.json`` back into a :class:`RunSummary` whose ``run_dir`` is ``run_dir``.

    Raises:
        ReportError: ``run_dir`` is not a run folder or its summary is unreadable (one line, with the fix).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{str(run_dir)!r} is not a directory; give a run folder such as results/<run>")
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        raise ReportError(f"no {SUMMARY_FILE} in {str(run_dir)!r}; give a run folder written by mpsearch "
                          "(or re-run the search there)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"cannot read {path} ({e}); re-run the search to rewrite it") from None
    return summary_from_dict(data, run_dir)
