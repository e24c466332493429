"""Other processes' CPU time on this process's CPUs (mpsearch.hardware.cpu_load), read from /proc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.hardware.cpu_load import OtherLoad, cpus_busy_s, tree_cpu_s

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")

SPIN = "import time\nend = time.perf_counter() + {s}\nwhile time.perf_counter() < end:\n    pass\n"


def _spin(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SPIN.format(s=seconds)])


def test_a_process_outside_the_tree_counts_and_the_trees_own_children_do_not() -> None:
    ours = OtherLoad()  # this process's tree: a child it spawns and reaps is its own work
    _spin(1.0).wait()
    assert ours.cores() < 0.4
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = OtherLoad(root=sleeper.pid)  # seen from another process's tree, the same spin is other load
        _spin(1.0).wait()
        assert 0.6 < theirs.cores() < len(theirs.cpus) + 0.5
    finally:
        sleeper.kill()
        sleeper.wait()


def test_unreadable_roots_and_cpus_read_as_unknown() -> None:
    assert tree_cpu_s(2**22 + 12345) is None  # above pid_max's default: no such process
    assert cpus_busy_s({10**6}) is None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    load = OtherLoad(root=gone.pid)
    assert load.cores() is None
