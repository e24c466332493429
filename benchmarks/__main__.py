"""``python -m benchmarks [name ...] [--quick] [--threads N]``: run the named benchmarks, or all."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from benchmarks.common import execute


def available() -> list[str]:
    """The benchmark modules: those that define ``run`` (shared helpers such as ``common`` and
    ``cases`` do not)."""
    here = Path(__file__).resolve().parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    return [n for n in names if callable(getattr(importlib.import_module(f"benchmarks.{n}"), "run", None))]


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-") and a in available()]
    rest = [a for a in argv if a not in names]
    unknown = [a for a in argv if not a.startswith("-") and a not in names and not _is_value(argv, a)]
    if unknown:
        print(f"benchmarks: unknown benchmark {unknown[0]!r}; choose from {', '.join(available())}",
              file=sys.stderr)
        return 2
    for name in names or available():
        print(f"== benchmark {name} ==", flush=True)
        execute(importlib.import_module(f"benchmarks.{name}"), rest)
    return 0


def _is_value(argv: list[str], arg: str) -> bool:
    """Whether ``arg`` is a value of the option before it: the nearest option token to its left takes
    values (``--batches 1 8``: both are values), with no benchmark name in between."""
    for prev in reversed(argv[:argv.index(arg)]):
        if prev.startswith("-"):
            return prev.startswith("--") and "=" not in prev and prev != "--quick"
        if prev in available():
            return False
    return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
