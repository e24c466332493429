"""TVM's output goes to the run's log file; mpsearch's own console output stays on the console."""

from __future__ import annotations

import logging
import os
import sys
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
