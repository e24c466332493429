"""The search space and the additive objectives the search runs on."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mpsearch.candidate import FLOAT_BITS, Bits, Candidate, check_bits
from mpsearch.errors import InfeasibleBudgetError


def bit_pairs(w_bits: Sequence[int], a_bits: Sequence[int], weight_only: bool = False) -> list[Bits]:
    """The (w, a) pairs a layer may take, widest first.

    Pairs with float weights and quantized activations are left out: they save neither time nor
    memory over FP32, so they are always dominated. Weight-only pairs (w < 32, a = 32) are opt-in.
    """
    pairs = []
    for w, a in itertools.product(sorted(set(w_bits), reverse=True), sorted(set(a_bits), reverse=True)):
        check_bits(w, a)
        if (w == FLOAT_BITS) != (a == FLOAT_BITS) and not (weight_only and a == FLOAT_BITS):
            continue
        pairs.append((w, a))
    return pairs


def pair_label(pair: Bits) -> str:
    return f"W{pair[0]}A{pair[1]}"


@dataclass(frozen=True)
class Objectives:
    """Proxy (predicted loss increase), latency and weight bytes of a candidate, all additive per layer."""

    proxy: float
    latency_ms: float
    weight_kib: float


@dataclass
class SearchProblem:
    """Per-layer tables the search optimizes over: sensitivity score, latency and weight bytes."""

    layers: list[str]
    pairs: list[Bits]
    score: Mapping[str, Mapping[Bits, float]]
    latency_s: Mapping[str, Mapping[Bits, float]]
    weight_bytes: Mapping[str, Mapping[Bits, int]]
    other_latency_s: float = 0.0

    def evaluate(self, candidate: Mapping[str, Bits]) -> Objectives:
        proxy = sum(self.score[n][candidate[n]] for n in self.layers)
        lat = self.other_latency_s + sum(self.latency_s[n][candidate[n]] for n in self.layers)
        mem = sum(self.weight_bytes[n][candidate[n]] for n in self.layers)
        return Objectives(proxy, lat * 1e3, mem / 1024)

    def extreme(self, table: Mapping[str, Mapping[Bits, float]], extra: float = 0.0) -> float:
        return extra + sum(min(table[n].values()) for n in self.layers)

    def check_budgets(self, latency_ms: float | None, weight_kib: float | None) -> None:
        """Raise if no candidate can meet a budget, naming the smallest achievable value."""
        if latency_ms is not None:
            fastest = self.extreme(self.latency_s, self.other_latency_s) * 1e3
            if fastest > latency_ms:
                raise InfeasibleBudgetError(
                    f"latency budget {latency_ms:g} ms is below the fastest candidate ({fastest:.3f} ms "
                    f"predicted); raise budget.latency_ms to at least {fastest:.3f}")
        if weight_kib is not None:
            smallest = self.extreme(self.weight_bytes) / 1024
            if smallest > weight_kib:
                raise InfeasibleBudgetError(
                    f"weight budget {weight_kib:g} KiB is below the smallest candidate ({smallest:.1f} KiB); "
                    f"raise budget.weight_kib to at least {smallest:.1f}")

    def lagrangian_pick(self, lam_latency: float, lam_memory: float = 0.0) -> Candidate:
        """Per-layer argmin of score + λ·cost: the sensitivity-guided solutions used to warm-start."""
        return Candidate({
            n: min(self.pairs, key=lambda p: (self.score[n][p] + lam_latency * self.latency_s[n][p]
                                              + lam_memory * self.weight_bytes[n][p], -p[0], -p[1]))
            for n in self.layers
        })
