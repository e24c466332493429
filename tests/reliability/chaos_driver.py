"""Runs ``mpsearch`` command lines and signals them inside a chosen stage: the chaos and Ctrl-C tests.

Like ``cli_driver.py``, the heavy imports are paid once and each run is a forked process running
the real console entry point (``mpsearch.cli.main``) on :class:`mpsearch.testing.TableBackend` (plan
``"backend": null``: the real TVM backend). The
driver watches the run's console for the pipeline's ``stage: <name>`` lines; a run with a ``signal``
gets it (``KILL`` or ``INT``, sent to the run's process group, as a terminal's Ctrl-C is) ``delay_s``
seconds after its stage began, or, with ``fraction``, that fraction of the stage's duration in the
``reference`` run of the plan (a run given ``"reference": true``, which must come first), or, with
``file`` (a glob under the run's folder) and ``min_lines``, once that file has that many complete
lines (e.g. tuning records: a moment inside MetaSchedule's tuning). Usage::

    python chaos_driver.py plan.json results.json

``plan.json``: ``{"argv": [...], "backend": {...}, "runs": [{"cwd": ..., "stage": ..., "signal": ...,
"fraction" | "delay_s": ..., "reference": bool}]}``. ``results.json``: per run ``{"rc", "stderr",
"stdout", "seconds", "stages": [[name, t], ...], "signalled_in": stage | null, "exit_after_signal_s",
"trials": {journal: [[number, params, values], ...]}, "cache_lines": {file: [sha256, ...]}}`` (afterwards:
the COMPLETE trials of each study, the complete lines of each append-only cache file).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

STAGE = re.compile(r"stage: (.+?)\s*$", re.M)


def _child(plan: dict, run: dict, out_path: str, err_path: str) -> int:
    os.setpgid(0, 0)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout.reconfigure(line_buffering=True)  # the stage lines must reach the file as they are logged
    os.chdir(run["cwd"])
    from cli_driver import run_cli, use_backend  # this folder is sys.path[0] of a script run here

    use_backend(plan.get("backend"))  # None: the real TVM backend
    return run_cli([*plan["argv"], *run.get("extra_argv", [])])


def _stages(out_path: str, err_path: str, start: float, seen: list[list]) -> None:
    """Append the stage lines that appeared since the last call, with the time they were seen."""
    text = ""
    for p in (out_path, err_path):
        try:
            with open(p, errors="replace") as f:
                text += f.read()
        except OSError:
            pass
    for name in STAGE.findall(text)[len(seen):]:
        seen.append([name, round(time.monotonic() - start, 3)])


def _complete_lines(cwd: str, pattern: str) -> int:
    """Newline-terminated lines in the first file matching the glob ``pattern`` under ``cwd`` (0: none)."""
    from pathlib import Path

    for path in Path(cwd).glob(pattern):
        try:
            return path.read_bytes().count(b"\n")
        except OSError:
            return 0
    return 0


def _durations(stages: list[list], total: float) -> dict[str, float]:
    ends = [t for _, t in stages[1:]] + [total]
    return {name: end - t for (name, t), end in zip(stages, ends)}


def execute(plan: dict, run: dict, index: int, results_path: str, reference: dict[str, float]) -> dict:
    out_path, err_path = f"{results_path}.{index}.out", f"{results_path}.{index}.err"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(plan, run, out_path, err_path)
        finally:
            os._exit(code)
    seen: list[list] = []
    signalled_at = signalled_in = None
    wanted = run.get("stage")
    deadline = start + float(plan.get("timeout_s", 600))
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        _stages(out_path, err_path, start, seen)
        now = time.monotonic()
        if now > deadline:
            os.killpg(pid, signal.SIGKILL)
            continue
        if run.get("file") and signalled_at is None:  # signal once a file has min_lines complete lines
            if _complete_lines(run["cwd"], run["file"]) >= run["min_lines"]:
                _stages(out_path, err_path, start, seen)
                signalled_in = seen[-1][0] if seen else None
                os.killpg(pid, getattr(signal, f"SIG{run['signal']}"))
                signalled_at = time.monotonic()
        elif wanted and signalled_at is None:
            began = next((t for name, t in seen if name == wanted), None)
            if began is not None:
                delay = run["delay_s"] if "delay_s" in run else run["fraction"] * reference.get(wanted, 0.0)
                if now - start >= began + delay:
                    _stages(out_path, err_path, start, seen)
                    signalled_in = seen[-1][0]
                    os.killpg(pid, getattr(signal, f"SIG{run['signal']}"))
                    signalled_at = time.monotonic()
        time.sleep(0.005)
    total = time.monotonic() - start
    _stages(out_path, err_path, start, seen)
    result = {"rc": os.waitstatus_to_exitcode(status), "stdout": open(out_path).read(),
              "stderr": open(err_path).read(), "seconds": round(total, 2), "stages": seen,
              "signalled_in": signalled_in,
              "exit_after_signal_s": None if signalled_at is None else round(time.monotonic() - signalled_at, 2)}
    try:  # a killed run may leave children in its process group (e.g. search workers): none may outlive it
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.unlink(out_path)
    os.unlink(err_path)
    if run.get("reference"):
        reference.update(_durations(seen, total))
    result["trials"] = _finished_trials(run["cwd"])
    result["cache_lines"] = _cache_lines(run["cwd"])
    return result


def _cache_lines(cwd: str) -> dict[str, list[str]]:
    """The complete lines (ending in a newline) of every append-only cache file under ``cwd``:
    JSON-lines stores and MetaSchedule's database, as SHA-256 digests."""
    import hashlib
    from pathlib import Path

    out = {}
    for path in sorted(Path(cwd).rglob("*")):
        if path.is_file() and (path.suffix == ".jsonl" or path.name.startswith("database_")):
            lines = path.read_bytes().split(b"\n")[:-1]  # the last piece has no newline: unfinished
            out[str(path.relative_to(cwd))] = [hashlib.sha256(line).hexdigest() for line in lines]
    return out


def _finished_trials(cwd: str) -> dict[str, list]:
    """Every study journal under ``cwd/results``: its COMPLETE trials as ``[number, params, values]``."""
    from pathlib import Path

    import optuna

    from mpsearch.search.journal import journal_storage

    out = {}
    for journal in sorted(Path(cwd).glob("results/*/study.journal")):
        try:
            study = optuna.load_study(study_name="mpsearch", storage=journal_storage(journal))
        except KeyError:  # killed before the study was created
            continue
        out[str(journal.relative_to(cwd))] = [
            [t.number, t.params, t.values] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    return out


def main() -> None:
    plan = json.loads(open(sys.argv[1]).read())
    import torch  # noqa: F401  (imported once, before forking; no torch op runs here)
    import hydra  # noqa: F401
    import mpsearch.cli  # noqa: F401
    import mpsearch.pipeline  # noqa: F401

    reference: dict[str, float] = {}
    results = [execute(plan, run, i, sys.argv[2], reference) for i, run in enumerate(plan["runs"])]
    with open(sys.argv[2], "w") as f:
        json.dump({"runs": results, "reference_durations": reference}, f)


if __name__ == "__main__":
    main()
