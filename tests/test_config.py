"""Every Hydra config composes into the typed schema; every dataclass round-trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mpsearch.cli import CONF_DIR, to_run_config
from mpsearch.config import RunConfig, validate
from mpsearch.errors import ConfigError

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONF_DIR).iterdir() if g.is_dir()}


def _compose(overrides: list[str]) -> RunConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_run_config(compose(config_name="config", overrides=overrides))


def test_default_composes_to_the_schema_defaults() -> None:
    cfg = _compose([])
    assert isinstance(cfg, RunConfig)
    assert cfg.model.name == "resnet20_fmnist" and cfg.hw_profile.name == "host_cpu"
    assert cfg.search.w_bits == [4, 8, 32] and cfg.budget.latency_ms is None
    validate(cfg)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group: str, option: str) -> None:
    validate(_compose([f"{group}={option}"]))


def test_overrides_are_typed() -> None:
    cfg = _compose(["budget.latency_ms=1.5", "search.n_trials=10", "hw_profile.trials_per_task=2"])
    assert cfg.budget.latency_ms == 1.5 and cfg.search.n_trials == 10 and cfg.hw_profile.trials_per_task == 2
    with pytest.raises(Exception, match="latency_ms"):
        _compose(["budget.latency_ms=fast"])


def test_round_trip_through_omegaconf() -> None:
    cfg = RunConfig()
    back = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(cfg.to_dict())))
    assert back == cfg and dataclasses.asdict(back) == cfg.to_dict()


def test_run_name_is_content_addressed() -> None:
    a, b = RunConfig(), RunConfig()
    b.results_dir = "elsewhere"
    assert a.default_run_name() == b.default_run_name()
    b.budget.latency_ms = 2.0
    assert a.default_run_name() != b.default_run_name() and "lat2ms" in b.default_run_name()


def test_model_inputs_compose_typed_and_keep_old_hashes() -> None:
    cfg = _compose(["model.inputs=[{shape:[1,16],dtype:int64},{shape:[1,16],dtype:int64}]"])
    assert cfg.model.input_specs() == [{"shape": [1, 16], "dtype": "int64"}] * 2
    validate(cfg)
    assert RunConfig.from_dict(cfg.to_dict()).model.input_specs() == cfg.model.input_specs()
    assert cfg.content_hash() != RunConfig().content_hash()
    # unset: one float input of input_shape, and the hash every earlier run folder was named with
    assert RunConfig().model.input_specs() == [{"shape": [1, 1, 28, 28], "dtype": "float32"}]
    before = RunConfig()
    before.search.bias_correction = False  # the behaviour of every earlier run: its folder's hash
    before.search.step_back = 0
    before.search.a_bits = [4, 8, 32]  # the menu every earlier run wrote into its config.json
    assert before.content_hash() == "6d737995"  # as before model.inputs existed
    before.search.accuracy_drop_pts = 2.0  # without a step back the tolerance changes nothing
    assert before.content_hash() == "6d737995"
    assert RunConfig().content_hash() != "6d737995"  # bias correction changes the results: a new folder
    old = RunConfig().to_dict()
    del old["search"]["bias_correction"]  # a config.json written before bias correction: rebuilt without it
    assert RunConfig.from_dict(old).search.bias_correction is False
    old = RunConfig().to_dict()
    del old["search"]["step_back"], old["search"]["accuracy_drop_pts"]  # written before the step back existed
    assert RunConfig.from_dict(old).search.step_back == 0 and RunConfig().search.step_back == 4
    assert RunConfig().content_hash() != RunConfig.from_dict(old).content_hash()  # it changes the results
    assert RunConfig.from_dict(RunConfig().to_dict()).search.bias_correction is True
    with pytest.raises(ConfigError, match=r"model.inputs\[1\].dtype='float64' is unknown"):
        validate(_compose(["model.inputs=[{shape:[1,16],dtype:int64},{shape:[1,16],dtype:float64}]"]))


def test_run_name_comes_from_the_model_factory_unless_named() -> None:
    cfg = RunConfig()
    assert cfg.default_run_name().startswith("resnet20_fmnist-host_cpu-")
    cfg.model.factory = "my_pkg.models:mobilenet_v2"
    assert cfg.default_run_name().startswith("mobilenet_v2-host_cpu-")
    cfg.model.factory = "my_pkg.models:build"
    assert cfg.default_run_name().startswith("models_build-")
    cfg.model.name = "encoder"
    assert cfg.default_run_name().startswith("encoder-")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("search.sampler", "cmaes", "search.sampler='cmaes' is unknown"),
    ("search.n_trials", 0, "search.n_trials=0"),
    ("budget.latency_ms", -1.0, "budget.latency_ms=-1.0 must be positive"),
    ("budget.weight_kib", 0.0, "budget.weight_kib=0.0 must be positive"),
    ("data.calib_samples", 0, "data.calib_samples=0"),
])
def test_validate_rejects_with_field_name(field: str, value: object, message: str) -> None:
    cfg = RunConfig()
    group, name = field.split(".")
    setattr(getattr(cfg, group), name, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_a_profile_given_by_path_names_the_run_folder_by_its_file() -> None:
    from mpsearch.config import RunConfig

    cfg = RunConfig()
    cfg.hw_profile.name = "boards/v2/my_board.yaml"
    name = cfg.default_run_name()
    assert name.startswith("resnet20_fmnist-my_board-") and "/" not in name
