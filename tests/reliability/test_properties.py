"""Property-based tests: candidate JSON decoding and config validation never fail any other way than
with their own one-line error, and what validation accepts is usable downstream."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.candidate import SUPPORTED_BITS, Candidate
from mpsearch.config import InputConfig, RunConfig, validate
from mpsearch.errors import CandidateError, ConfigError
from mpsearch.hardware.profile import profile_from_dict

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@given(st.one_of(json_values.map(json.dumps), st.text(max_size=40)))
def test_candidate_decoding_is_a_candidate_or_one_candidate_error(text: str) -> None:
    try:
        cand = Candidate.from_json(text)
    except CandidateError as e:
        assert "\n" not in str(e)
        return
    for w, a in cand.values():
        assert w in SUPPORTED_BITS and a in SUPPORTED_BITS  # nothing unsupported gets through
    assert Candidate.from_json(cand.to_json()) == cand


@given(st.dictionaries(st.text(min_size=1, max_size=10),
                       st.lists(st.integers(min_value=-3, max_value=40) | st.booleans(), min_size=0, max_size=3),
                       min_size=1, max_size=6))
def test_candidate_from_near_valid_json(bits: dict) -> None:
    try:
        cand = Candidate.from_json(json.dumps(bits))
    except CandidateError as e:
        assert "\n" not in str(e)
        return
    assert cand.to_dict() == {k: list(v) for k, v in bits.items()}


def _field_values(f: dataclasses.Field) -> st.SearchStrategy:
    """Values of the field's own type (Hydra guarantees the type), extremes included."""
    t = str(f.type)
    ints = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([0, 1, -1, 2**32, 10**30])
    floats = st.floats(allow_nan=True, allow_infinity=True)
    base = {"int": ints, "float": floats, "str": st.text(max_size=12) | st.sampled_from(["nsga2", "tpe", "mse"]),
            "bool": st.booleans(), "list[int]": st.lists(ints, max_size=5), "list[str]": st.lists(st.text(max_size=6),
                                                                                                   max_size=3),
            "list[list[str]]": st.lists(st.lists(st.text(max_size=6) | st.sampled_from(["conv1", "re:layer1.*"]),
                                                 max_size=3), max_size=3),
            "list[InputConfig]": st.lists(st.builds(InputConfig, shape=st.lists(ints, max_size=4),
                                                    dtype=st.text(max_size=8) | st.sampled_from(["int64", "bool"])),
                                          max_size=3)}
    for name, strat in base.items():
        if t == name:
            return strat
        if t == f"Optional[{name}]":
            return st.none() | strat
    raise AssertionError(f"no strategy for {f.name}: {t}")


GROUPS = ("model", "data", "hw_profile", "search", "budget")
FIELDS = [(g, f) for g in GROUPS for f in dataclasses.fields(getattr(RunConfig(), g))]


@st.composite
def mutated_configs(draw) -> tuple[RunConfig, list[str]]:
    cfg = RunConfig()
    changed = []
    for group, f in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique_by=lambda x: x[1].name)):
        setattr(getattr(cfg, group), f.name, draw(_field_values(f)))
        changed.append(f"{group}.{f.name}")
    return cfg, changed


@settings(max_examples=300)
@given(mutated_configs())
def test_validate_accepts_or_raises_one_config_error(case: tuple[RunConfig, list[str]]) -> None:
    cfg, changed = case
    try:
        validate(cfg)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg
        assert any(name in msg for name in changed), (msg, changed)  # it names a field that was changed
        return
    # Accepted: every value is one the pipeline can use.
    s, d = cfg.search, cfg.data
    assert s.n_trials >= 1 and s.measure_front >= 1 and 1 <= s.workers <= 256 and 1 <= s.ilp_budgets <= 1000
    assert 0 <= s.seed < 2**32 and 0 < s.percentile <= 100 and 0 <= s.max_failure_rate <= 1
    assert 0 <= s.step_back <= 20 and 0 < s.accuracy_drop_pts <= 100
    assert s.sensitivity_samples >= 1 and 2 <= s.calibration_bits <= 8 and s.w_bits and (s.a_bits is None or s.a_bits)
    assert d.batch_size >= 1 and d.calib_samples >= 1 and (d.test_samples is None or d.test_samples >= 1)
    assert all(x >= 1 for x in cfg.model.input_shape) and math.prod(cfg.model.input_shape) <= 1 << 28
    for spec in cfg.model.input_specs():
        assert spec["shape"] and all(x >= 1 for x in spec["shape"]) and math.prod(spec["shape"]) <= 1 << 28
        assert spec["dtype"] in ("float32", "int64", "int32", "bool")
    for v in (cfg.budget.latency_ms, cfg.budget.weight_kib):
        assert v is None or v > 0
    hw = cfg.hw_profile
    assert (hw.trials_per_task is None or hw.trials_per_task >= 1) and (hw.threads is None or hw.threads >= 0)


@given(st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3),
       st.sampled_from(GROUPS + ("results_dir", "nope")))
def test_config_json_with_odd_content_is_a_config_error(value: dict, key: str) -> None:
    data = RunConfig().to_dict()
    data[key] = value
    try:
        validate(RunConfig.from_dict(data))
    except ConfigError as e:
        assert "\n" not in str(e)
    except TypeError:  # pragma: no cover - reported as a failure below
        pytest.fail("RunConfig.from_dict let a wrong type through to a TypeError")


profile_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
PROFILE_KEYS = ["name", "target", "device", "threads", "measure", "tuning", "rpc", "precisions", "cross_compiler"]


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(PROFILE_KEYS), profile_values, max_size=5),
       st.dictionaries(st.sampled_from(["kind", "mcpu", "mattr", "arch", "host"]), profile_values, max_size=3))
def test_any_profile_yaml_is_a_profile_or_one_config_error(data: dict, target: dict) -> None:
    data = {"name": "p", "target": {"kind": "llvm", **target}, **data}
    try:
        profile = profile_from_dict(data, where="p.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert profile.resolved_threads() >= 1 and profile.tuning.trials_per_task >= 1
