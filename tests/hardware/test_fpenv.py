"""Denormals flushed on the threads that run kernels (mpsearch.hardware.fpenv)."""

from __future__ import annotations

import threading

import pytest
import torch

from mpsearch.hardware.fpenv import flush_denormals

DENORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


@pytest.fixture
def restore_fp_env():
    yield
    torch.set_flush_denormal(False)


def _flushed() -> bool:
    """Whether this thread's arithmetic takes a denormal fp32 operand as zero."""
    return float(torch.tensor([DENORMAL], dtype=torch.float32) * 1.0) == 0.0


def test_flushing_takes_denormals_as_zero_here_and_in_threads_started_later(restore_fp_env):
    torch.set_flush_denormal(False)
    assert not _flushed(), "a denormal is kept by default"
    if not flush_denormals():
        pytest.skip("this CPU cannot flush denormals (not x86 with SSE3)")
    assert _flushed()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(_flushed()))  # as TVM's pool threads start
    worker.start()
    worker.join()
    assert seen == [True], "a thread started after the flush does not inherit it"


def test_the_backend_and_the_tuning_runner_flush_denormals(restore_fp_env, tmp_path):
    """The backend flushes the thread it is made on (it runs the kernels and starts TVM's pool), and the
    MetaSchedule runner of a local device starts its worker processes with the flush."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.fpenv import flush_denormals as flush
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend

    if not flush():
        pytest.skip("this CPU cannot flush denormals (not x86 with SSE3)")
    torch.set_flush_denormal(False)
    backend = TVMBackend(load_profile("host_cpu_1t"), tmp_path, progress=False)
    assert _flushed()
    from tvm.s_tir import meta_schedule as ms

    runner = backend.device.runner(ms.runner.EvaluatorConfig(number=1, repeat=1), 10.0)
    assert runner.pool._initializer is flush  # run once in each worker process before it times anything


def test_a_local_measurement_session_flushes_again_what_another_library_turned_off(restore_fp_env):
    """Creating an ONNX Runtime session at its defaults turns the flush off on this thread; the next local
    measurement session turns it back on before anything is timed."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.session import make_device

    if not flush_denormals():
        pytest.skip("this CPU cannot flush denormals (not x86 with SSE3)")
    torch.set_flush_denormal(False)  # as an ONNX Runtime session's creation leaves it
    with make_device(load_profile("host_cpu_1t")).session():
        assert _flushed()
