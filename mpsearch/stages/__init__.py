"""The stages of one run, each a function with plain inputs that returns a small dataclass;
:func:`mpsearch.pipeline.run` calls them in order:

load → device → calibration → sensitivity → hardware cost → (run folder) → search → proxy validation →
evaluation → learned quantization (optional) → report.

Each stage is logged as ``stage: <name>`` and timed by :class:`StageTimer`, which also names the stage
a Ctrl-C stopped.
"""

from mpsearch.stages.accuracy import AccuracyCache, accuracy_context, cached_accuracy, evaluate_accuracy
from mpsearch.stages.cost import BASELINES, hardware_cost, search_problem
from mpsearch.stages.device import BackendFactory, configured_profile, default_backend
from mpsearch.stages.evaluate import Evaluation, StepBack, Todo, check_failure_rate, evaluate, to_evaluate
from mpsearch.stages.learn import learn, wants_learning
from mpsearch.stages.load import Loaded, batches, build_model, check_data, load, load_candidate, load_data, preflight
from mpsearch.stages.report import RunOutcome, open_run_folder, report, report_notes, versions, write_artifacts
from mpsearch.stages.search import Searched, search, search_settings
from mpsearch.stages.sensitivity import Sensitivity, estimate_sensitivity, joint_proxy, sample_batch, skipped_note
from mpsearch.stages.timer import StageTimer
from mpsearch.stages.validate import ProxyValidation, validate_proxy

__all__ = [
    "AccuracyCache", "BASELINES", "BackendFactory", "Evaluation", "Loaded", "ProxyValidation", "RunOutcome",
    "Searched", "Sensitivity", "StageTimer", "StepBack", "Todo", "accuracy_context", "batches", "build_model",
    "cached_accuracy", "check_data", "check_failure_rate", "configured_profile", "default_backend",
    "estimate_sensitivity", "evaluate", "evaluate_accuracy", "hardware_cost", "joint_proxy", "learn", "load",
    "load_candidate", "load_data", "open_run_folder", "preflight", "report", "report_notes", "sample_batch",
    "search", "search_problem", "search_settings", "skipped_note", "to_evaluate", "validate_proxy", "versions",
    "wants_learning", "write_artifacts",
]
