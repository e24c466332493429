"""Runs ``mpsearch.cli.main`` for several command lines, each in its own forked process.

The real console entry point (Hydra, the one-line error handler, ``sys.exit``) runs in a separate
process per case, so each case has its own exit status and stderr; the imports (torch, Hydra,
mpsearch: seconds) are paid once, not once per case. Usage::

    python cli_driver.py cases.json results.json

``cases.json``: ``[{"argv": [...], "cwd": "...", "backend": {...} | null}]``. ``backend`` null runs
the real TVM backend; a mapping runs :class:`mpsearch.testing.TableBackend` with those keyword
arguments (``cost_table_error``: a message raised as a HardwareError). ``results.json`` gets
``[{"rc": int, "stderr": str, "stdout": str}]``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback


def _child(case: dict, out_path: str, err_path: str) -> int:
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.chdir(case["cwd"])
    sys.path.insert(0, case["cwd"])  # as `python -m mpsearch.cli` run there would have it
    use_backend(case.get("backend"))
    return run_cli(case["argv"])


def use_backend(spec: dict | None) -> None:
    """Make ``mpsearch.pipeline.run`` use :class:`mpsearch.testing.TableBackend` with the keyword
    arguments ``spec`` (``cost_table_error``: a message raised as a HardwareError); ``None``: the real
    TVM backend."""
    import mpsearch.pipeline as pipeline
    from mpsearch.errors import HardwareError
    from mpsearch.testing import TableBackend

    if spec is None:
        return
    kwargs = dict(spec)
    if kwargs.get("cost_table_error"):
        kwargs["cost_table_error"] = HardwareError(kwargs["cost_table_error"])

    def factory(profile, cache_dir, progress):
        return TableBackend(profile, cache_dir, progress, **kwargs)

    pipeline.run = functools.partial(pipeline.run, backend_factory=factory)


def run_cli(argv: list[str]) -> int:
    """``mpsearch <argv>`` through the real console entry point; its exit status."""
    from mpsearch import cli

    sys.argv = ["mpsearch", *argv]
    try:
        cli.main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    # Import the heavy modules once, before forking.
    import torch  # noqa: F401
    import hydra  # noqa: F401
    import mpsearch.cli  # noqa: F401
    import mpsearch.pipeline  # noqa: F401

    results = []
    for i, case in enumerate(cases):
        start = time.perf_counter()
        out_path, err_path = f"{sys.argv[2]}.{i}.out", f"{sys.argv[2]}.{i}.err"
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(case, out_path, err_path)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        results.append({"rc": os.waitstatus_to_exitcode(status), "stdout": open(out_path).read(),
                        "stderr": open(err_path).read(), "seconds": round(time.perf_counter() - start, 2)})
        os.unlink(out_path)
        os.unlink(err_path)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
