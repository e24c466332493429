"""Command-line entry point: Hydra composes the config, then a plain function runs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mpsearch.config import RunConfig, register_configs
from mpsearch.errors import MPSearchError

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("mpsearch")

register_configs()


def to_run_config(cfg: DictConfig) -> RunConfig:
    """DictConfig → typed dataclass (the library never sees a DictConfig)."""
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, RunConfig)
    return obj


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from mpsearch.pipeline import run

    try:
        outcome = run(to_run_config(cfg))
    except MPSearchError as e:  # raised inside Hydra's job runner, which would print a traceback
        print(f"mpsearch: error: {e}", file=sys.stderr)
        sys.exit(2)
    s = outcome.summary
    best = [c for c in s.candidates if c.kind == "pareto"]
    log.info("done: %d Pareto candidates evaluated; report at %s", len(best), outcome.files.get("report_md"))


def main() -> None:
    """``mpsearch [overrides]``: one line on stderr and exit status 2 for any mpsearch error."""
    _hydra_main()


if __name__ == "__main__":
    main()
