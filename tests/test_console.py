"""TVM's output goes to the run's log file; mpsearch's own console output stays on the console."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

from mpsearch.console import RunLog, run_log


def test_native_and_tvm_logger_output_go_to_the_file_and_ours_to_the_console(tmp_path: Path, capfd) -> None:
    path = tmp_path / "tvm.log"
    ours = logging.getLogger("mpsearch.test_console")
    handler = logging.StreamHandler(sys.stderr)
    ours.addHandler(handler)
    ours.propagate = False
    try:
        with RunLog(path):
            os.write(2, b"[rewrite_tensorize.cc:50] Warning: Tensorize failed (native)\n")
            logging.getLogger("tvm.s_tir.meta_schedule.task_scheduler").info("Initializing Task #0")
            ours.warning("stage: search")
            print("a progress bar", file=sys.stderr)
    finally:
        ours.removeHandler(handler)
    out, err = capfd.readouterr()
    text = path.read_text()
    assert "Tensorize failed (native)" in text and "Initializing Task #0" in text
    assert "Tensorize failed" not in err + out and "Initializing Task" not in err + out
    assert "stage: search" in err and "a progress bar" in err
    assert "stage: search" not in text


def test_everything_is_restored_on_exit_even_after_an_error(tmp_path: Path, capfd) -> None:
    tvm_logger = logging.getLogger("tvm")
    before = (tvm_logger.propagate, tvm_logger.level, list(tvm_logger.handlers), sys.stderr)
    with pytest.raises(RuntimeError), RunLog(tmp_path / "tvm.log"):
        raise RuntimeError("boom")
    assert (tvm_logger.propagate, tvm_logger.level, list(tvm_logger.handlers), sys.stderr) == before
    os.write(2, b"after\n")
    assert "after" in capfd.readouterr().err
    assert "after" not in (tmp_path / "tvm.log").read_text()


def test_the_log_moves_into_the_run_folder_and_appends_to_an_earlier_one(tmp_path: Path, capfd) -> None:
    pending = tmp_path / "cache" / "logs" / "run.log"
    final = tmp_path / "results" / "run" / "tvm.log"
    final.parent.mkdir(parents=True)
    final.write_text("earlier run\n")
    with RunLog(pending) as log:
        os.write(2, b"before the run folder\n")
        log.move_to(final)
        os.write(2, b"after the move\n")
        logging.getLogger("tvm.x").warning("python side after the move")
    assert not pending.exists()
    lines = final.read_text().splitlines()
    assert lines[0] == "earlier run" and lines[1] == "before the run folder" and lines[2] == "after the move"
    assert "python side after the move" in lines[3]
    assert "before the run folder" not in capfd.readouterr().err


def test_verbose_keeps_tvm_output_on_the_console(capfd) -> None:
    with run_log(None) as log:
        os.write(2, b"native line\n")
    assert log is None and "native line" in capfd.readouterr().err


def test_library_warnings_go_to_the_file_not_the_console(tmp_path: Path, capfd) -> None:
    """torch.export's and Optuna's deprecation / experimental notices raised during a run (seen in the
    default run's console, 2026-12-06) are written to the log file; the console keeps mpsearch's lines."""
    path = tmp_path / "tvm.log"
    before = warnings.showwarning
    with RunLog(path):
        # (the LeafSpec one itself is filtered out in pytest's configuration; Optuna's is a UserWarning)
        warnings.warn_explicit("set_metric_names is experimental", UserWarning, "optuna_search.py", 309)
        print("stage: search", file=sys.stderr)
    assert warnings.showwarning is before
    out, err = capfd.readouterr()
    text = path.read_text()
    assert "UserWarning: set_metric_names is experimental" in text and "py.warnings" in text
    assert "experimental" not in out + err and "stage: search" in err


def test_a_pending_log_with_only_warnings_counts_as_empty(tmp_path: Path) -> None:
    """A run that stops on bad input before its run folder exists drops its pending log unless TVM wrote
    to it; a library warning alone must not keep the file (the bad-input test leaves nothing behind)."""
    from mpsearch.pipeline import _drop_or_point_at

    quiet, noisy = tmp_path / "logs" / "quiet.log", tmp_path / "logs" / "noisy.log"
    with RunLog(quiet) as log:
        assert log.holds_only_warnings  # nothing at all
        warnings.warn_explicit("set_metric_names is experimental", UserWarning, "optuna_search.py", 309)
        assert quiet.stat().st_size > 0 and log.holds_only_warnings
    _drop_or_point_at(quiet, log.holds_only_warnings)
    assert not quiet.exists()
    with RunLog(noisy) as log:
        warnings.warn_explicit("set_metric_names is experimental", UserWarning, "optuna_search.py", 309)
        os.write(2, b"[task_scheduler.cc:174] Initializing Task #0\n")
        assert not log.holds_only_warnings
    _drop_or_point_at(noisy, log.holds_only_warnings)
    assert "Initializing Task" in noisy.read_text()
