"""A MetaSchedule search strategy that measures every design space of a kernel before any twice
(imports TVM: load lazily).

MetaSchedule's ``replay-trace`` draws each trial's design space uniformly at random. The hand-built
conv space (:func:`~mpsearch.hardware.kernels.schedules.conv_space`) enumerates its choices as design
spaces of their own (channel blocks x tile width: 4 to 14 of them), so at the few trials a run affords
random draws measure some choices twice and never reach others: tuned at 8 trials, EfficientNet-Lite0's
fp32 1x1 convs ran 1.3-1.9x slower than the best choice of the same space timed untuned (192 -> 1152 at
7x7: 246 against 163 us, one thread of a Sapphire Rapids Xeon).

:class:`ReplaySpaces` draws the design spaces in rounds instead: each round every space once, the
hand-built choices first, then MetaSchedule's generic sketches, each group in an order shuffled from
the tuning context's random state, each replayed with fresh random decisions (as
``replay-trace`` does: a space with no sampled decision gives the same schedule every time). A schedule
already measured (this run, or a tuning record the database holds from an earlier run tuning the kernel
further) is skipped, so a budget of n trials measures n different schedules while there are that many.
"""

from __future__ import annotations

import random
from typing import Any

from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm_ffi import structural_hash

from mpsearch import interrupt

#: Replays of one space that may fail postprocessing (or repeat a measured schedule) before the
#: strategy moves on to the next space.
MAX_FAILS = 4


@derived_object
class ReplaySpaces(ms.search_strategy.PySearchStrategy):
    """Every design space measured once per round, rounds in shuffled order, no schedule twice."""

    def _initialize_with_tune_context(self, context: Any) -> None:
        self.mod = context.mod
        self.postprocs = list(context.space_generator.postprocs)
        self.rng = random.Random(int(context.rand_state))

    def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list[Any],
                   database: Any = None, cost_model: Any = None) -> None:
        # copies of one space (conv_space's, for replay-trace's sake) replay alike: one of each
        traces = {str(t): t for t in (s.trace.simplified(remove_postproc=True) for s in design_spaces)}
        self.traces = list(traces.values())
        # hand-built choices first in each round (their tiling is fixed: no SamplePerfectTile), then the
        # generic sketches: the hand-built space won 37 of EfficientNet-Lite0's 42 kernels it was sampled on
        self.ranks = [int(any(i.kind.name == "SamplePerfectTile" for i in t.insts)) for t in self.traces]
        self.left, self.per_iter = max_trials, num_trials_per_iter
        self.order: list[int] = []
        self.seen = set()
        if database is not None and database.has_workload(self.mod):  # tuned before: skip what it measured
            for record in database.get_top_k(database.commit_workload(self.mod), max(1, len(database))):
                sch = s_tir.Schedule(self.mod, debug_mask=0, error_render_level="none")
                try:
                    record.trace.apply_to_schedule(sch, remove_postproc=False)
                except Exception:  # noqa: BLE001 - a record of another version of the space
                    continue
                self.seen.add(structural_hash(sch.mod))

    def post_tuning(self) -> None:
        pass

    def generate_measure_candidates(self) -> list[Any] | None:
        if self.left <= 0 or not self.traces or interrupt.requested():  # Ctrl-C: this task ends
            return None
        out = []
        budget = len(self.traces) * MAX_FAILS  # replays this iteration may spend before giving up
        while len(out) < min(self.per_iter, self.left) and budget > 0:
            if not self.order:  # a new round, popped from the end
                shuffled = self.rng.sample(range(len(self.traces)), len(self.traces))
                self.order = sorted(shuffled, key=lambda i: self.ranks[i], reverse=True)
            trace = self.traces[self.order.pop()]
            for _ in range(MAX_FAILS):
                budget -= 1
                sch = self._replay(trace)
                if sch is not None:
                    key = structural_hash(sch.mod)
                    if key not in self.seen:
                        self.seen.add(key)
                        out.append(ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod)))
                        break
        if not out:
            return None
        self.left -= len(out)
        return out

    def _replay(self, trace: Any) -> Any | None:
        """``trace`` applied with fresh random decisions, then postprocessed; None where that fails."""
        sch = s_tir.Schedule(self.mod, seed=self.rng.randrange(1, 2**31 - 1), debug_mask=0,
                             error_render_level="none")
        try:
            s_tir.Trace(trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
            sch.enter_postproc()
            if not all(p.apply(sch) for p in self.postprocs):
                return None
        except Exception:  # noqa: BLE001 - a replay that does not apply, as replay-trace skips it
            return None
        return sch

    def notify_runner_results(self, measure_candidates: list[Any], results: list[Any]) -> None:
        pass

    def clone(self) -> Any:
        return ReplaySpaces()


__all__ = ["MAX_FAILS", "ReplaySpaces"]
