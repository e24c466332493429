"""The search space and the additive objectives the search runs on."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mpsearch.candidate import FLOAT_BITS, Bits, check_bits
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
    activation_kib: float = 0.0  # peak: planned inter-kernel storage + the largest kernel workspace


@dataclass
class SearchProblem:
    """Per-layer tables the search optimizes over: sensitivity score, latency and weight bytes."""

    layers: list[str]
    pairs: list[Bits]
    score: Mapping[str, Mapping[Bits, float]]
    latency_s: Mapping[str, Mapping[Bits, float]]
    weight_bytes: Mapping[str, Mapping[Bits, int]]
    other_latency_s: float = 0.0
    # Activation memory (see hardware/memory_plan.py): a candidate's peak is the planned inter-kernel
    # storage plus its largest kernel workspace, so a budget on it forbids, layer by layer, the pairs
    # whose workspace does not fit; the ILP and the search both honour it.
    workspace_bytes: Mapping[str, Mapping[Bits, int]] | None = None
    activation_bytes: int = 0
    activation_budget_kib: float | None = None

    def evaluate(self, candidate: Mapping[str, Bits]) -> Objectives:
        proxy = sum(self.score[n][candidate[n]] for n in self.layers)
        lat = self.other_latency_s + sum(self.latency_s[n][candidate[n]] for n in self.layers)
        mem = sum(self.weight_bytes[n][candidate[n]] for n in self.layers)
        return Objectives(proxy, lat * 1e3, mem / 1024, self.activation_peak_bytes(candidate) / 1024)

    def activation_peak_bytes(self, candidate: Mapping[str, Bits]) -> int:
        ws = self.workspace_bytes or {}
        return self.activation_bytes + max((ws[n][candidate[n]] for n in self.layers if n in ws), default=0)

    def allowed(self, layer: str, pair: Bits) -> bool:
        """Whether ``pair`` at ``layer`` fits the activation budget (always, without one)."""
        if self.activation_budget_kib is None or not self.workspace_bytes:
            return True
        return self.activation_bytes + self.workspace_bytes[layer][pair] <= self.activation_budget_kib * 1024

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
        if self.activation_budget_kib is not None and self.workspace_bytes:
            need = (self.activation_bytes + max(min(self.workspace_bytes[n].values()) for n in self.layers)) / 1024
            if need > self.activation_budget_kib:
                raise InfeasibleBudgetError(
                    f"activation budget {self.activation_budget_kib:g} KiB is below the smallest peak activation "
                    f"memory ({need:.1f} KiB planned by TVM); raise budget.activation_kib to at least {need:.1f}")

    def to_json(self) -> str:
        """Plain JSON (pairs as ``"w,a"`` keys), so worker processes on other machines can load it."""
        def enc(table: Mapping[str, Mapping[Bits, float]]) -> dict:
            return {n: {f"{w},{a}": v for (w, a), v in table[n].items()} for n in self.layers}
        return json.dumps({"layers": self.layers, "pairs": [list(p) for p in self.pairs],
                           "score": enc(self.score), "latency_s": enc(self.latency_s),
                           "weight_bytes": enc(self.weight_bytes), "other_latency_s": self.other_latency_s,
                           "workspace_bytes": enc(self.workspace_bytes) if self.workspace_bytes else None,
                           "activation_bytes": self.activation_bytes,
                           "activation_budget_kib": self.activation_budget_kib})

    @classmethod
    def from_json(cls, text: str) -> SearchProblem:
        d = json.loads(text)

        def dec(table: Mapping[str, Mapping[str, float]]) -> dict:
            return {n: {tuple(int(b) for b in k.split(",")): v for k, v in row.items()} for n, row in table.items()}
        return cls(d["layers"], [tuple(p) for p in d["pairs"]], dec(d["score"]), dec(d["latency_s"]),
                   dec(d["weight_bytes"]), d["other_latency_s"],
                   dec(d["workspace_bytes"]) if d.get("workspace_bytes") else None, d.get("activation_bytes", 0),
                   d.get("activation_budget_kib"))
