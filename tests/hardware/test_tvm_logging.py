"""Tuning leaves the process's logging alone: its own per-task loggers, nothing on the console.

Regression: MetaSchedule's ``get_loggers_from_work_dir`` calls ``logging.config.dictConfig`` for the whole
process and failed with ``AttributeError: 'NoneType' object has no attribute 'format'`` whenever a handler
without a name sat on the ``tvm.s_tir.meta_schedule`` logger (seen in a full test run, order-dependent).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mpsearch.hardware.tvm_backend import _task_loggers


def test_task_loggers_write_to_one_file_and_never_propagate(tmp_path: Path, caplog) -> None:
    with _task_loggers(tmp_path / "logs", ["conv_W8A8_abcdef", "linear_W4A8_123456"]) as loggers:
        for lg in loggers:
            lg.info("Sending 2 sample(s) to builder")
    assert all(not lg.propagate and not lg.handlers for lg in loggers)  # handlers closed and removed after
    text = (tmp_path / "logs" / "tuning.log").read_text()
    assert "task_0_conv_W8A8_abcdef" in text and "task_1_linear_W4A8_123456" in text
    assert "Sending 2 sample" not in caplog.text


@pytest.mark.slow
@pytest.mark.tvm
def test_tuning_with_an_unnamed_handler_on_the_meta_schedule_logger(tmp_path: Path, capfd) -> None:
    pytest.importorskip("tvm")
    from tests.hardware.test_kernels_16x4 import _spec
    from tests.hardware.test_tvm_backend import tiny_profile

    from mpsearch.hardware.tvm_backend import TVMBackend, _hash_mod

    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = logging.NullHandler()  # e.g. a test harness's; TVM's dictConfig choked on its None name
    root_sentinel = logging.StreamHandler()
    ms_logger.addHandler(unnamed)
    logging.getLogger().addHandler(root_sentinel)
    try:
        backend = TVMBackend(tiny_profile(trials=1), tmp_path, progress=False)
        mod = backend._kernel_mod(_spec("linear", "i8", 8, backend.dot_isa or "avx512bw"))
        backend.tune({_hash_mod(mod): ("linear_W8A8", mod)})
        assert backend._has_record(mod)
        # the application's logging configuration is untouched: nothing closed, nothing added
        assert root_sentinel in logging.getLogger().handlers and root_sentinel.stream is not None
        assert ms_logger.handlers == [unnamed]
    finally:
        ms_logger.removeHandler(unnamed)
        logging.getLogger().removeHandler(root_sentinel)
    assert "Initializing Task" not in capfd.readouterr().out
    (task_log,) = (tmp_path / "tvm").glob("*/work/logs/tuning.log")
    assert "task_0_linear_W8A8" in task_log.read_text()
