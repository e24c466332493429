"""The RPC path end to end: a real TVM tracker and RPC server on 127.0.0.1, measured and tuned through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.errors import HardwareError
from mpsearch.hardware.profile import HwProfile, profile_from_dict
from mpsearch.hardware.rpc import free_port
from mpsearch.hardware.session import make_device
from mpsearch.quant.fake import quantize_
from mpsearch.testing import synthetic_split

KEY = "mpsearch-loopback"


def rpc_profile(host: str, port: int, key: str = KEY, mcpu: str = "x86-64", trials: int = 1) -> HwProfile:
    return profile_from_dict({
        "name": "loopback_board", "device": "rpc", "target": {"kind": "llvm", "mcpu": mcpu}, "threads": 1,
        "rpc": {"tracker_host": host, "tracker_port": port, "key": key, "connect_timeout_s": 2},
        "measure": {"number": 3, "repeat": 3, "min_repeat_ms": 1, "warmup": 1},
        "tuning": {"trials_per_task": trials, "trials_per_iter": trials, "runner_timeout_s": 60},
    })


def test_unreachable_tracker_is_one_line_naming_profile_and_address() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(HardwareError) as info:
        make_device(rpc_profile("127.0.0.1", port)).check()
    msg = str(info.value)
    assert "\n" not in msg and "'loopback_board'" in msg and f"127.0.0.1:{port}" in msg
    assert "cannot reach the TVM RPC tracker" in msg


@pytest.mark.tvm
def test_backend_refuses_an_unreachable_board_before_tuning(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    from mpsearch.hardware.tvm_backend import TVMBackend

    port = free_port()
    with pytest.raises(HardwareError, match=f"'loopback_board': cannot reach .* 127.0.0.1:{port}"):
        TVMBackend(rpc_profile("127.0.0.1", port), tmp_path, progress=False)
    assert not (tmp_path / "tvm").exists()


# -- a real tracker and server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker():
    pytest.importorskip("tvm")
    from mpsearch.hardware.rpc import loopback_tracker

    with loopback_tracker(KEY) as address:
        yield address


@pytest.fixture(scope="module")
def host_mcpu() -> str:
    import tvm

    return tvm.target.codegen.llvm_get_system_cpu()


@pytest.mark.tvm
@pytest.mark.slow
def test_unregistered_key_names_the_registered_ones(tracker) -> None:
    with pytest.raises(HardwareError, match=f"no board is registered with key 'rpi4' .*registered keys: {KEY}"):
        make_device(rpc_profile(*tracker, key="rpi4")).check()


@pytest.mark.tvm
@pytest.mark.slow
def test_layer_kernel_runs_and_is_timed_on_the_board(tracker, host_mcpu) -> None:
    """A real layer kernel (int8 conv, fused requantize + ReLU): exported, uploaded, run and timed remotely."""
    import tvm

    from mpsearch.hardware.kernels import KernelSpec, make_kernel

    profile = rpc_profile(*tracker, mcpu=host_mcpu)
    spec = KernelSpec(op="conv2d", x_shape=(1, 4, 8, 8), w_shape=(8, 4, 3, 3), w_mode="i8", a_mode="u8",
                      padding=(1, 1), epilogue=("relu",))
    exe = tvm.compile(make_kernel(spec).with_attr("global_symbol", "main"), target=tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu}))
    rng = np.random.default_rng(0)
    arrays = []
    for name, shape, dtype in spec.inputs():
        if name == "qp":
            arrays.append(np.array([10.0, 0.0, 255.0, 0.1], "float32"))
        elif dtype == "float32":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(-8, 8, shape).astype(dtype))
    arrays.append(np.zeros(spec.out_shape, "float32"))
    local = [tvm.runtime.tensor(a) for a in arrays]
    exe.jit()["main"](*local)
    with make_device(profile).session() as s:
        mod = s.load(exe, "conv")
        assert type(s).__name__ == "RPCSession"
        remote = [s.tensor(a) for a in arrays]
        mod["main"](*remote)
        out = remote[-1].numpy()
        samples = s.time(mod, "main", remote, profile.measure)
    assert np.array_equal(out, local[-1].numpy()) and np.abs(out).max() > 0
    assert len(samples) == 3 and all(0 < t < 0.1 for t in samples)


def one_conv_model() -> torch.nn.Module:
    """One quantizable layer (conv + ReLU), then global pooling: a whole model with a single kernel."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.mark.tvm
@pytest.mark.slow
def test_model_tuned_measured_and_run_over_rpc(tracker, host_mcpu, tmp_path) -> None:
    """MetaSchedule tunes through its RPC runner; the kernel and the model are timed and run on the board.
    The model has ONE kernel, so one RPC tuning trial: it is the RPC path that is tested here (deeper
    models are lowered, tuned and run in process by tests/hardware/test_tvm_backend.py)."""
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.tvm_backend import TVMBackend
    from mpsearch.quant.calibration import calibrate
    from mpsearch.quant.prepare import prepare_model

    prepared = prepare_model(one_conv_model(), (1, 1, 8, 8))
    calib = synthetic_split("calib", 64).tensors
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(calib[0], calib[1])])
    backend = TVMBackend(rpc_profile(*tracker, mcpu=host_mcpu), tmp_path, progress=False)
    assert isinstance(backend.device.runner(ms.runner.EvaluatorConfig(), 10), ms.runner.RPCRunner)
    table = backend.cost_table(prepared, ranges, [(8, 8)])
    names = prepared.layer_names
    assert backend.stats["tuned_kernels"] == len(names) == 1 and backend.stats["measured_kernels"] == 1
    assert all(0 < table.latency_s[n][(8, 8)] < 0.1 for n in names)
    records = (backend.dir / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= len(names)  # the kernel got a measured schedule from the board
    cand = Candidate.uniform(names, 8, 8)
    meas = backend.measure(prepared, cand, ranges)
    assert meas.ok and 0 < meas.latency_s < 0.1 and "via RPC tracker" in backend.describe()
    x = synthetic_split("test", 32).tensors[0]
    out = backend.run(prepared, cand, ranges, x.numpy())
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
