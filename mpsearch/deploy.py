"""Run an exported candidate: ``mpsearch.deploy.load(export_dir)`` returns a callable model.

``export_dir`` is what ``mpsearch-export`` wrote (``results/<run>/export/<label>/``): ``model.so``,
``params.npz`` and ``manifest.json``. The loader checks the files against the sha256 the manifest
records, loads the library into a Relax VM and binds the parameters once, in the order the manifest
lists them (the library's argument order)::

    from mpsearch import deploy

    model = deploy.load("results/<run>/export/pareto-3")
    logits = model(x)  # x: (N, *input_shape[1:]) float32, numpy or torch; the same type comes back
    logits = bert(input_ids, attention_mask, token_type_ids)  # several inputs: manifest["inputs"] order

Each input takes the dtype the manifest's ``inputs`` lists (int64 token ids and masks stay integers).

The library runs on this machine's CPU, so the export must have been built for it (a local profile);
every problem with the folder is one :class:`DeployError` line naming the file and the fix.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.errors import ConfigError, MPSearchError
from mpsearch.hashing import file_sha256
from mpsearch.quant.prepare import InputSpec, as_inputs

__all__ = ["DeployError", "DeployedModel", "load"]

_REEXPORT = "re-export it with mpsearch-export <run dir> --label <label>"


class DeployError(MPSearchError):
    """The export folder is missing, incomplete or corrupt, or its library cannot run here."""


class DeployedModel:
    """An exported candidate, callable on a batch of inputs (see the module docstring).

    Attributes: ``manifest`` (the export's ``manifest.json``), ``input_shape`` (the first input's, batch 1,
    as exported), ``inputs`` (every input's :class:`~mpsearch.quant.prepare.InputSpec`, in call order) and
    ``param_names`` (the bound parameters, in the library's argument order). Not thread-safe.
    """

    def __init__(self, export_dir: Path, manifest: dict[str, Any], runner: Any) -> None:
        self.export_dir = export_dir
        self.manifest = manifest
        self.input_shape = tuple(int(d) for d in manifest["input_shape"])
        self.inputs = _inputs(manifest)
        self.param_names = list(manifest["library"]["params"])
        self._run = runner

    def __call__(self, *xs: Any) -> Any:
        """Outputs for the model's inputs, each ``(N, *shape[1:])`` (or one sample each, ``shape[1:]``)."""
        if not xs:
            raise DeployError(f"no input given; this model takes {self._takes()}")
        torch_in = type(xs[0]).__module__.startswith("torch")
        arrs = [x.detach().cpu().numpy() if type(x).__module__.startswith("torch") else np.asarray(x) for x in xs]
        single = len(arrs) == len(self.inputs) and all(
            tuple(a.shape) == tuple(spec.shape[1:]) for a, spec in zip(arrs, self.inputs))
        if single:
            arrs = [a[None] for a in arrs]
        try:
            out = self._run(*arrs)
        except ConfigError as e:
            raise DeployError(f"{e} (or one sample of each, without the batch dimension)") from None
        if single:
            out = out[0]
        if torch_in:
            import torch

            return torch.from_numpy(out)
        return out

    def _takes(self) -> str:
        return ", ".join(f"(N, {', '.join(map(str, spec.shape[1:]))}) {spec.dtype}" for spec in self.inputs)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"DeployedModel({m.get('candidate')!r} of {m.get('run')!r}: {m.get('description', '')}, "
                f"{m.get('hw_profile')}, input {self.input_shape})")


def _inputs(manifest: dict[str, Any]) -> tuple[InputSpec, ...]:
    """The manifest's ``inputs``; an export written before several inputs existed: one float32 input."""
    if "inputs" not in manifest:
        return (InputSpec(tuple(int(d) for d in manifest["input_shape"])),)
    return as_inputs(manifest["inputs"])


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise DeployError(f"{folder} has no manifest.json; give a folder written by mpsearch-export "
                          "(results/<run>/export/<label>/)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        lib = manifest["library"]
        if not (isinstance(lib["file"], str) and isinstance(lib["params_file"], str)
                and all(isinstance(n, str) for n in lib["params"]) and isinstance(manifest["files"], dict)):
            raise TypeError("wrong field types")
        [int(d) for d in manifest["input_shape"]]
        _inputs(manifest)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as e:
        raise DeployError(f"{path} is unreadable or incomplete ({type(e).__name__}: {e}); {_REEXPORT}") from None
    return manifest


def _check_file(folder: Path, name: str, manifest: dict[str, Any], verify: bool) -> Path:
    path = folder / name
    if Path(name).name != name:
        raise DeployError(f"{folder / 'manifest.json'} names {name!r}, not a file of the export folder; {_REEXPORT}")
    if not path.is_file():
        raise DeployError(f"{path} is missing; {_REEXPORT}")
    expected = (manifest["files"].get(name) or {}).get("sha256")
    if verify and expected is not None and file_sha256(path) != expected:
        raise DeployError(f"{path} does not match the sha256 in manifest.json (corrupt or changed since the "
                          f"export); {_REEXPORT}")
    return path


def _params(path: Path, names: Sequence[str]) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise DeployError(f"{path} lacks parameter {missing[0]!r} that manifest.json lists; {_REEXPORT}")
            return [np.ascontiguousarray(data[n]) for n in names]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DeployError(f"{path} is not a readable parameter archive ({type(e).__name__}); {_REEXPORT}") from None


def load(export_dir: str | Path, threads: int | None = None, verify_files: bool = True) -> DeployedModel:
    """Load ``export_dir`` (``results/<run>/export/<label>/``) into a callable :class:`DeployedModel`.

    Args:
        export_dir: the folder ``mpsearch-export`` wrote.
        threads: TVM threads for this process (``None``: leave TVM's pool as it is; the export was measured
            with ``manifest["threads"]``).
        verify_files: check ``model.so`` and ``params.npz`` against the sha256 in the manifest.
    """
    folder = Path(export_dir).expanduser()
    if not folder.is_dir():
        raise DeployError(f"export folder {folder} does not exist; give a folder written by mpsearch-export "
                          "(results/<run>/export/<label>/)")
    manifest = _manifest(folder)
    lib = manifest["library"]
    library = _check_file(folder, lib["file"], manifest, verify_files)
    params = _params(_check_file(folder, lib["params_file"], manifest, verify_files), lib["params"])
    profile = manifest.get("profile") or {}
    if profile.get("device", "local") != "local":
        raise DeployError(f"{folder} was built for {manifest.get('hw_profile')!r}, a {profile.get('device')} device, "
                          "not this machine's CPU; copy the folder to that device and load it there")
    from mpsearch.errors import HardwareError
    from mpsearch.hardware.export_lib import LoadedLibrary

    try:
        runner = LoadedLibrary(library, params, threads, _inputs(manifest))
    except HardwareError as e:
        raise DeployError(str(e)) from None
    return DeployedModel(folder, manifest, runner)
