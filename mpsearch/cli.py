"""Command-line entry point: Hydra composes the config, then a plain function runs."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mpsearch.config import BudgetConfig, DataConfig, HwProfileConfig, ModelConfig, RunConfig, SearchConfig, \
    register_configs
from mpsearch.errors import ConfigError, Interrupted, MPSearchError

# The repository's conf/, shipped in wheels as package data (mpsearch/conf links to it in a checkout).
# Users add config groups of their own with Hydra's --config-dir DIR (e.g. DIR/hw_profile/my_board.yaml).
CONF_DIR = str((Path(__file__).resolve().parent / "conf").resolve())
log = logging.getLogger("mpsearch")
_SCHEMA_GROUPS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "hw_profile": HwProfileConfig,
                                   "search": SearchConfig, "budget": BudgetConfig}
_NOISE = ("reference_type=", "object_type=", "See https://hydra.cc", "Set the environment variable HYDRA_FULL_ERROR")

register_configs()


def to_run_config(cfg: DictConfig) -> RunConfig:
    """DictConfig → typed dataclass (the library never sees a DictConfig); an unknown key is a ConfigError."""
    _reject_unknown_keys(cfg, RunConfig, "")
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, RunConfig)
    return obj


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from mpsearch.interrupt import sigint_requests_stop
    from mpsearch.pipeline import run
    from mpsearch.report.console import recommendation_lines

    try:
        with sigint_requests_stop():
            outcome = run(to_run_config(cfg))
    except MPSearchError as e:  # raised inside Hydra's job runner, which would print a traceback
        print(f"mpsearch: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        _interrupted(e)
    s = outcome.summary
    best = [c for c in s.candidates if c.kind == "pareto"]
    log.info("done: %d Pareto candidates evaluated; report at %s", len(best), outcome.files.get("report_md"))
    log.info("summary:\n%s", "\n".join(recommendation_lines(s)))


def _reject_unknown_keys(node: DictConfig, schema: type, where: str) -> None:
    """``+search.typo=1`` appends a key the schema lacks, which ``to_object`` would silently drop."""
    known = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in known:
            raise ConfigError(f"unknown config key {where}{key}; valid keys{' in ' + where[:-1] if where else ''} "
                              f"are {', '.join(known)}")
        value = node._get_node(key)
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(_SCHEMA_GROUPS.get(str(key))) and not where:
            _reject_unknown_keys(value, _SCHEMA_GROUPS[str(key)], f"{key}.")


def one_line(e: BaseException) -> str:
    """A Hydra / OmegaConf error (several lines, a hint to set HYDRA_FULL_ERROR) as one line."""
    parts: list[str] = []
    for err in (e, e.__cause__):
        for raw in str(err or "").splitlines():
            line = raw.strip()
            if line.startswith("Config search path"):
                break
            if not line or line in parts or line.startswith(_NOISE):
                continue
            if parts and parts[-1].endswith(":"):
                parts[-1] += " " + line
            elif parts and raw.startswith("\t"):  # one more item of a listing (e.g. available options)
                parts[-1] += ", " + line
            else:
                parts.append(line)
    return "; ".join(parts) or type(e).__name__


def _config_dir_as_searchpath(args: list[str]) -> list[str]:
    """``--config-dir DIR`` / ``-cd DIR`` (Hydra's own option) as the equivalent search-path override."""
    out, dirs, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(args[i + 1])
            i += 2
            continue
        if a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
        else:
            out.append(a)
        i += 1
    for d in dirs:
        if not Path(d).is_dir():
            print(f"mpsearch: error: --config-dir {d}: no such folder; give a folder of config groups "
                  "(e.g. DIR/hw_profile/my_board.yaml)", file=sys.stderr)
            sys.exit(2)
    if dirs:
        out.append("hydra.searchpath=[" + ",".join(repr(f"file://{Path(d).resolve()}") for d in dirs) + "]")
    return out


def _precheck(args: list[str]) -> None:
    """Compose plain overrides before Hydra does, so a bad one ends with one line and exit status 2."""
    args = _config_dir_as_searchpath(args)
    if any(a.startswith("-") or "${hydra:" in a for a in args):  # --multirun, --cfg ...: Hydra reports those
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            to_run_config(compose(config_name="config", overrides=args))
    except MPSearchError as e:
        print(f"mpsearch: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # Hydra's override-grammar, composition and OmegaConf type errors
        print(f"mpsearch: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def _interrupted(e: KeyboardInterrupt) -> None:
    """Ctrl-C (SIGINT): one line saying where the run stopped, exit status 130 (128 + SIGINT)."""
    where = f" during the {e.stage} stage" if isinstance(e, Interrupted) else ""
    print(f"mpsearch: interrupted{where}; finished work (study trials, tuned kernels, timings, caches) is kept: "
          "re-run the same command to resume", file=sys.stderr)
    sys.exit(130)


def main() -> None:
    """``mpsearch [overrides]``: one line on stderr and exit status 2 for any mpsearch error, 130 on Ctrl-C."""
    try:
        _precheck(sys.argv[1:])
        _hydra_main()
    except KeyboardInterrupt as e:
        _interrupted(e)


if __name__ == "__main__":
    main()
