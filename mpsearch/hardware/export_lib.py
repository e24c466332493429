"""Build a candidate into a deployable TVM library and run that library back (imports TVM lazily).

The library is compiled exactly as the backend compiles a candidate for measurement: the candidate
is lowered (:func:`mpsearch.hardware.lowering.lower`), then MetaSchedule's ``compile_relax`` applies
the profile's tuning database, so the exported code runs the schedules the run measured. Parameters
stay function inputs (as in measurement), so they ship beside the library in ``params.npz``:

    lib = tvm.runtime.load_module("model.so")
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    out = vm["main"](*inputs, *[params[n] for n in manifest["library"]["params"]])

``inputs`` are the model's inputs in ``manifest["inputs"]`` order, batch 1, of the dtypes listed there
(float32 images, int64 token ids and masks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpsearch.candidate import Candidate
from mpsearch.errors import ConfigError, HardwareError
from mpsearch.hardware.fpenv import denormals_flushed
from mpsearch.hardware.threads import use_threads
from mpsearch.hardware.profile import HwProfile
from mpsearch.quant.prepare import InputSpec, PreparedModel, input_arrays

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltLibrary:
    """What :func:`build_tuned` wrote."""

    library: Path
    params: Path
    param_names: list[str]
    target: str
    input_shape: tuple[int, ...]  # the first input's
    tuned_now: int  # kernels missing from the tuning database, tuned during the export
    inputs: tuple[InputSpec, ...] = ()  # every model input, in the library's argument order


def build_tuned(
    profile: HwProfile, cache_dir: Path, prepared: PreparedModel, candidate: Candidate,
    ranges: Mapping[str, tuple[float, float]], out_dir: Path, progress: bool = False,
) -> BuiltLibrary:
    """Compile ``candidate`` for ``profile`` with the tuned schedules of ``cache_dir`` and export it: the
    deployable build (:func:`mpsearch.hardware.build.build_untuned` is the untuned compile check).

    Writes ``model.so`` (``export_library``, cross-linked when the profile names a compiler) and
    ``params.npz`` (the library's parameter arrays, by name) into ``out_dir``. Kernels the database
    lacks (e.g. a deleted cache) are tuned first, with a warning: never compiled with a naive schedule.
    """
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.session import export_library
    from mpsearch.hardware.tvm_backend import TVMBackend

    backend = TVMBackend(profile, Path(cache_dir), progress=progress)
    before = backend.stats["tuned_kernels"]
    backend.tune_candidate(prepared, candidate, ranges)
    tuned_now = backend.stats["tuned_kernels"] - before
    if tuned_now:
        log.warning("%d kernel(s) of this candidate were not in the tuning database (%s) and were tuned now; "
                    "the run's measured latencies came from other schedules", tuned_now, backend.dir)
    lowered = backend.lower(prepared, candidate, ranges)  # the kernels tune_candidate tuned
    try:
        exe = ms.relax_integration.compile_relax(backend.db, lowered.mod, backend.target, None)
    except Exception as e:  # TVM's own error types; one line is enough to name the failing pass
        text = str(e).strip().splitlines()
        raise HardwareError(f"compiling the candidate for {profile.name!r} failed: "
                            f"{text[-1] if text else type(e).__name__}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    library = export_library(exe, out_dir / "model.so", profile)
    names = [str(p.name) for p in lowered.mod["main"].params][len(prepared.inputs):]  # after the model inputs
    if len(names) != len(set(names)) or len(names) != len(lowered.params):
        raise HardwareError("the lowered model's parameter names are not unique; cannot store them by name")
    params = out_dir / "params.npz"
    tmp = out_dir / ".params.tmp.npz"
    np.savez(tmp, **dict(zip(names, lowered.params)))
    os.replace(tmp, params)
    return BuiltLibrary(library, params, names, str(backend.target), tuple(prepared.input_shape), tuned_now,
                        tuple(prepared.inputs))


def load_params(path: Path, names: Sequence[str]) -> list[np.ndarray]:
    """The parameter arrays of ``params.npz`` in the library's argument order."""
    with np.load(path, allow_pickle=False) as data:
        missing = [n for n in names if n not in data.files]
        if missing:
            raise HardwareError(f"{path}: parameter {missing[0]!r} is missing; re-export the candidate")
        return [np.ascontiguousarray(data[n]) for n in names]


class LoadedLibrary:
    """An exported library loaded back (``tvm.runtime.load_module`` + Relax VM) with its parameters bound
    once, in the library's argument order. Called on the model's inputs, each ``(N, *shape[1:])``
    (:func:`~mpsearch.quant.prepare.input_arrays`; ``inputs`` declares them, default one float32 input),
    it runs them row by row (the library was compiled for batch 1, as it was tuned and measured) and
    returns ``(N, ...)``. A wrong input is a :class:`~mpsearch.errors.ConfigError`. Not thread-safe (one VM)."""

    def __init__(self, library: Path, params: Sequence[np.ndarray], threads: int | None = None,
                 inputs: Sequence[InputSpec] | None = None) -> None:
        import tvm

        if threads:
            use_threads(threads)
        try:
            lib = tvm.runtime.load_module(str(library))
        except Exception as e:
            text = str(e).strip().splitlines()
            raise HardwareError(f"cannot load {library} on this machine ({text[-1] if text else type(e).__name__}); "
                                "was it built for another target?") from None
        self._tvm = tvm
        self.device = tvm.cpu(0)
        self.vm = tvm.relax.VirtualMachine(lib, self.device)
        self.args = [tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in params]
        self.inputs = tuple(inputs) if inputs else None

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        specs = self.inputs
        if specs is None:  # undeclared: one float32 input of the shape it has
            if len(inputs) != 1:
                raise ConfigError(f"{len(inputs)} input arrays given; this library takes one")
            specs = (InputSpec((1, *np.shape(inputs[0])[1:])),)
        arrays = input_arrays(specs, inputs)
        tensor = self._tvm.runtime.tensor
        with denormals_flushed():  # as the library was tuned and measured (fpenv.py)
            outs = [self.vm["main"](*[tensor(a[i:i + 1], self.device) for a in arrays], *self.args).numpy()
                    for i in range(len(arrays[0]))]
        return np.concatenate(outs) if outs else np.zeros((0,), dtype="float32")


def run_library(library: Path, params: Sequence[np.ndarray], inputs: np.ndarray | Sequence[np.ndarray],
                threads: int | None = None, specs: Sequence[InputSpec] | None = None) -> np.ndarray:
    """Load an exported library back and run it on ``inputs``: one ``(N, *shape[1:])`` array, or one per
    model input as ``specs`` declares them (see :class:`LoadedLibrary`)."""
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return LoadedLibrary(library, params, threads, specs)(*args)


def tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


__all__ = ["BuiltLibrary", "LoadedLibrary", "build_tuned", "load_params", "run_library", "tvm_version",
           "use_threads"]
