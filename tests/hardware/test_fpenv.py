"""Denormals flushed while kernels run, and only then (mpsearch.hardware.fpenv)."""

from __future__ import annotations

import threading

import pytest
import torch

from mpsearch.hardware.fpenv import denormals_flushed, flush_denormals, flushed


@pytest.fixture
def restore_fp_env():
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def _can_flush() -> None:
    with denormals_flushed() as now:
        if not now:
            pytest.skip("this CPU cannot flush denormals (not x86 with SSE3)")


def test_a_flushed_block_takes_denormals_as_zero_and_puts_the_thread_back(restore_fp_env):
    _can_flush()
    assert not flushed(), "a denormal is kept by default"
    with denormals_flushed():
        assert flushed()
        assert float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0  # fp32 too
        seen = []
        worker = threading.Thread(target=lambda: seen.append(flushed()))  # as TVM's pool threads start
        worker.start()
        worker.join()
        assert seen == [True], "a thread started inside the block does not inherit the flush"
    assert not flushed(), "the block left this thread flushing: Python's own floats would change"


def test_a_block_inside_a_flushing_thread_leaves_it_flushing(restore_fp_env):
    _can_flush()
    flush_denormals()
    with denormals_flushed():
        pass
    assert flushed()


def test_a_local_measurement_session_flushes_only_while_it_is_open(restore_fp_env):
    """What the backend times runs flushed (an ONNX Runtime session made at its defaults may have turned
    the flush off before), and the thread is as it was after the session."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.session import make_device

    _can_flush()
    with make_device(load_profile("host_cpu_1t")).session():
        assert flushed()
    assert not flushed()


def test_the_tuning_runner_flushes_denormals_in_its_worker_processes(tmp_path):
    """MetaSchedule's runner processes only time kernels: they flush for good, from their start."""
    pytest.importorskip("tvm")
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.session import make_device

    runner = make_device(load_profile("host_cpu_1t")).runner(ms.runner.EvaluatorConfig(number=1, repeat=1), 10.0)
    assert runner.pool._initializer is flush_denormals  # run once in each worker process before it times anything


def test_making_a_backend_leaves_pythons_floats_alone(restore_fp_env, tmp_path):
    """Hypothesis, and any float arithmetic of the user's, needs subnormals: the backend does not flush
    the thread it is made on."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend

    TVMBackend(load_profile("host_cpu_1t"), tmp_path, progress=False)
    assert not flushed()
