"""mpsearch benchmarks: figures measured side by side in one run, written to results/benchmarks/.

Run all: ``python -m benchmarks``; one: ``python -m benchmarks <name>`` (``--quick`` for a small smoke
run that writes nothing under results/ unless ``--out`` is given). Each benchmark module defines
``NAME``, a one-line ``TITLE`` and ``run(args) -> BenchmarkResult``.
"""
