"""mpsearch.deploy.load: an exported library as a callable, checked against the export's verification run."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch import deploy
from mpsearch.candidate import Candidate
from mpsearch.hashing import file_sha256
from mpsearch.quant.fake import quantize_
from mpsearch.testing import synthetic_split


@dataclass
class Export:
    dir: Path
    x: np.ndarray  # test inputs
    verified: np.ndarray  # what the export's verification run (export_lib.run_library) returned for x
    fake_quant: np.ndarray


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_prepared, tiny_ranges) -> Export:
    """A real TVM library of a mixed W4A8/W8A8 tiny model, written as mpsearch-export writes it (model.so,
    params.npz, manifest.json), compiled untuned so it takes seconds (tuning is not what is tested here)."""
    pytest.importorskip("tvm")
    from mpsearch.hardware import export_lib
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend

    root = tmp_path_factory.mktemp("deploy")
    names = tiny_prepared.layer_names
    cand = Candidate({n: (8, 8) if i % 2 else (4, 8) for i, n in enumerate(names)})
    profile = load_profile("host_cpu_1t")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TVMBackend, "tune_candidate", lambda self, *a, **k: None)  # the default schedules
        built = export_lib.build_tuned(profile, root / "cache", tiny_prepared, cand, tiny_ranges, root / "export")
    x = synthetic_split("test", 24).tensors[0].numpy()
    # export.py's verification: the library and parameters loaded back from disk and run on the inputs
    verified = export_lib.run_library(built.library, export_lib.load_params(built.params, built.param_names), x)
    with torch.no_grad():
        fake = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges).eval()(torch.from_numpy(x)).numpy()
    files = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in (built.library, built.params)}
    manifest = {"run": "tiny", "candidate": "mixed", "description": cand.describe(),
                "input_shape": list(built.input_shape), "hw_profile": profile.name, "profile": profile.to_dict(),
                "threads": 1, "files": files,
                "library": {"file": built.library.name, "params_file": built.params.name,
                            "params": built.param_names, "batch": 1}}
    (root / "export" / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return Export(root / "export", x, verified, fake)


@pytest.mark.tvm
def test_deployed_model_equals_the_verification_run(tiny_export: Export) -> None:
    from mpsearch.hardware.fpenv import flushed

    was = flushed()
    model = deploy.load(tiny_export.dir)
    out = model(tiny_export.x)
    assert isinstance(out, np.ndarray) and out.shape == (24, 3)
    assert np.array_equal(out, tiny_export.verified)
    assert flushed() == was  # the call ran with denormals flushed (fpenv.py), and left this thread as it was
    # and it is the candidate: the fake-quant model's arithmetic, up to float rounding
    scale = np.abs(tiny_export.fake_quant).max()
    assert np.abs(out - tiny_export.fake_quant).max() <= 1e-3 * scale
    # torch in, torch out; one sample without the batch dimension
    t = model(torch.from_numpy(tiny_export.x))
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), tiny_export.verified)
    one = model(tiny_export.x[3])
    assert one.shape == (3,) and np.array_equal(one, tiny_export.verified[3])
    assert model.param_names[0] == "stem_w" and "mixed" in repr(model)
    with pytest.raises(deploy.DeployError, match=r"input of shape \(2, 3, 8, 8\); this model takes \(N, 1, 8, 8\)"):
        model(np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(deploy.DeployError, match=r"^2 input array\(s\) given; the model takes 1: \[1, 1, 8, 8\]"):
        model(tiny_export.x, tiny_export.x)
    assert model.inputs[0].shape == (1, 1, 8, 8)  # a manifest without "inputs": one float32 input of input_shape


@pytest.mark.tvm
def test_parameters_are_bound_in_the_manifest_order(tiny_export: Export, tmp_path: Path) -> None:
    """The library takes (x, *params) positionally: the manifest's list, not the archive's order, decides."""
    folder = shutil.copytree(tiny_export.dir, tmp_path / "e")
    manifest = json.loads((folder / "manifest.json").read_text())
    names = manifest["library"]["params"]
    with np.load(folder / "params.npz") as data:
        arrays = {n: data[n] for n in data.files}
    np.savez(folder / "params.npz", **{n: arrays[n] for n in reversed(names)})  # archive order reversed
    out = deploy.load(folder, verify_files=False)(tiny_export.x)
    assert np.array_equal(out, tiny_export.verified)
    i, j = names.index("fc_scale"), names.index("fc_bias")
    names[i], names[j] = names[j], names[i]  # same shapes, swapped: a different model
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not np.array_equal(deploy.load(folder, verify_files=False)(tiny_export.x), tiny_export.verified)


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.mark.tvm
def test_missing_or_corrupt_export_is_one_line(tiny_export: Export, tmp_path: Path) -> None:
    with pytest.raises(deploy.DeployError) as e:
        deploy.load(tmp_path / "nope")
    assert "does not exist; give a folder written by mpsearch-export" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(deploy.DeployError) as e:
        deploy.load(tmp_path / "empty")
    assert "has no manifest.json" in _one_line(e)

    def broken(name: str, edit) -> str:
        folder = shutil.copytree(tiny_export.dir, tmp_path / name)
        edit(folder)
        with pytest.raises(deploy.DeployError) as e:
            deploy.load(folder)
        return _one_line(e)

    assert "manifest.json is unreadable or incomplete" in broken("json", lambda f: (f / "manifest.json").write_text("{"))
    assert "manifest.json is unreadable or incomplete (KeyError" in broken(
        "keys", lambda f: (f / "manifest.json").write_text('{"input_shape": [1]}'))
    assert "model.so is missing; re-export it with mpsearch-export" in broken("so", lambda f: (f / "model.so").unlink())

    def flip(f: Path) -> None:
        raw = bytearray((f / "params.npz").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (f / "params.npz").write_bytes(bytes(raw))

    assert "params.npz does not match the sha256 in manifest.json" in broken("sha", flip)
    folder = shutil.copytree(tiny_export.dir, tmp_path / "trunc")
    (folder / "params.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(deploy.DeployError) as e:
        deploy.load(folder, verify_files=False)
    assert "params.npz is not a readable parameter archive" in _one_line(e)

    def drop(f: Path) -> None:
        m = json.loads((f / "manifest.json").read_text())
        m["library"]["params"].append("extra_w")
        (f / "manifest.json").write_text(json.dumps(m))

    assert "lacks parameter 'extra_w' that manifest.json lists" in broken("param", drop)

    def remote(f: Path) -> None:
        m = json.loads((f / "manifest.json").read_text())
        m["profile"]["device"], m["hw_profile"] = "rpc", "rpi4"
        (f / "manifest.json").write_text(json.dumps(m))

    assert "built for 'rpi4', a rpc device, not this machine's CPU" in broken("rpc", remote)

    def bad_inputs(f: Path) -> None:
        m = json.loads((f / "manifest.json").read_text())
        m["inputs"] = [{"shape": [1, 1, 8, 8], "dtype": "float16"}]
        (f / "manifest.json").write_text(json.dumps(m))

    assert "manifest.json is unreadable or incomplete (ConfigError: model input dtype 'float16'" in broken(
        "inputs", bad_inputs)
    folder = shutil.copytree(tiny_export.dir, tmp_path / "garbage")
    (folder / "model.so").write_bytes(b"\x7fELF garbage")
    with pytest.raises(deploy.DeployError) as e:
        deploy.load(folder, verify_files=False)
    assert f"cannot load {folder / 'model.so'} on this machine" in _one_line(e)
