"""The search space and the additive objectives the search runs on."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mpsearch.candidate import FLOAT_BITS, Bits, check_bits
from mpsearch.errors import ConfigError, InfeasibleBudgetError
from mpsearch.hardware.kernels.spec import SATURATING_DOT_ISAS
from mpsearch.search.groups import check_candidate, merge_groups


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


DEFAULT_A_BITS = (4, 8, 32)  # search.a_bits unset: the activation widths every target's search offers
REDUCED_A_BITS = 7  # ... and this one where 8-bit activations take a slower dot (activation_bits)


def activation_bits(a_bits: Sequence[int] | None, dot_isa: str = "", supported: Sequence[int] = ()) -> list[int]:
    """The activation widths the search offers: ``a_bits`` (``search.a_bits``) as given, else
    :data:`DEFAULT_A_BITS`, plus :data:`REDUCED_A_BITS` where ``dot_isa`` (the target's int8 dots,
    :func:`~mpsearch.hardware.kernels.dot_isa`) runs 8-bit activations on a slower dot than 7-bit ones
    and the profile ``supported`` 7. ``vpmaddubsw`` saturates at int16 on 8-bit codes against 8-bit
    weights, so x86 CPUs without VNNI (AVX2, AVX-512BW) run those on the 16x2 ``vpmaddwd`` dot and up
    to 7 bits on the 16x4 one: the reduced range FBGEMM quantizes activations to on such CPUs
    (ResNet-20's 3x3 convs ran up to 1.8x faster at 7 bits than at 8 on AVX2 code, README)."""
    if a_bits is not None:
        return list(a_bits)
    reduced = dot_isa in SATURATING_DOT_ISAS and REDUCED_A_BITS in supported
    return sorted({*DEFAULT_A_BITS, *([REDUCED_A_BITS] if reduced else [])})


def pair_label(pair: Bits) -> str:
    return f"W{pair[0]}A{pair[1]}"


@dataclass(frozen=True)
class Objectives:
    """Proxy (predicted loss increase), latency and weight bytes of a candidate, all additive per layer."""

    proxy: float
    latency_ms: float
    weight_kib: float
    activation_kib: float = 0.0  # peak: planned inter-kernel storage + the largest kernel workspace
    bops_g: float = 0.0  # giga bit-operations: sum over layers of MACs x w_bits x a_bits (0 without MACs)


#: Objectives a search may minimise (``search.objectives``), their metric names in the study, in this order.
OBJECTIVES = {"proxy": "proxy", "latency": "latency_ms", "memory": "weight_kib", "activation": "activation_kib",
              "bops": "bops_g"}


def objective_names(objectives: Sequence[str] | None, memory_objective: bool = True) -> list[str]:
    """The objectives a search minimises, in canonical order; None: proxy, latency (and weight memory)."""
    if objectives is None:
        return ["proxy", "latency", "memory"] if memory_objective else ["proxy", "latency"]
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"search.objectives: {unknown[0]!r} is unknown; use some of {', '.join(OBJECTIVES)}")
    if "proxy" not in objectives or len(set(objectives)) < 2:
        raise ConfigError(f"search.objectives={list(objectives)} must include 'proxy' and at least one cost "
                          "(latency, memory, activation, bops)")
    return [o for o in OBJECTIVES if o in objectives]


@dataclass
class SearchProblem:
    """Per-layer tables the search optimizes over: sensitivity score, latency and weight bytes.

    ``groups`` lists layers that must take one precision (tied weights, user groups; see
    :mod:`.groups`): each is one search variable (:attr:`variables`), whose costs are its members'
    summed. ``macs`` (per layer, batch included) gives the BOPs objective; budgets that hold for every
    solve (activation memory, BOPs) live here, the swept ones (latency, weights) are arguments.
    """

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
    groups: list[list[str]] | None = None
    macs: Mapping[str, int] | None = None
    bops_budget_g: float | None = None

    def __post_init__(self) -> None:
        self.groups = merge_groups(self.layers, self.groups or [])
        if self.bops_budget_g is not None and self.macs is None:
            raise ConfigError("a BOPs budget needs the layers' MACs; build the problem with macs=")
        grouped = {m: g for g in self.groups for m in g}
        seen: set[str] = set()
        self.variables: list[tuple[str, list[str]]] = []
        for n in self.layers:
            if n in seen:
                continue
            members = grouped.get(n, [n])
            seen.update(members)
            self.variables.append(("+".join(members), members))

    def evaluate(self, candidate: Mapping[str, Bits]) -> Objectives:
        proxy = sum(self.score[n][candidate[n]] for n in self.layers)
        lat = self.other_latency_s + sum(self.latency_s[n][candidate[n]] for n in self.layers)
        mem = sum(self.weight_bytes[n][candidate[n]] for n in self.layers)
        return Objectives(proxy, lat * 1e3, mem / 1024, self.activation_peak_bytes(candidate) / 1024,
                          self.bops_g(candidate))

    def layer_bops_g(self, layer: str, pair: Bits) -> float:
        """Giga bit-operations of one layer: MACs x w_bits x a_bits (float layers count 32 x 32)."""
        return (self.macs or {}).get(layer, 0) * pair[0] * pair[1] / 1e9

    def bops_g(self, candidate: Mapping[str, Bits]) -> float:
        return sum(self.layer_bops_g(n, candidate[n]) for n in self.layers)

    def activation_peak_bytes(self, candidate: Mapping[str, Bits]) -> int:
        ws = self.workspace_bytes or {}
        return self.activation_bytes + max((ws[n][candidate[n]] for n in self.layers if n in ws), default=0)

    def allowed(self, layer: str, pair: Bits) -> bool:
        """Whether ``pair`` at ``layer`` fits the activation budget (always, without one)."""
        if self.activation_budget_kib is None or not self.workspace_bytes:
            return True
        return self.activation_bytes + self.workspace_bytes[layer][pair] <= self.activation_budget_kib * 1024

    def group_cost(self, members: Sequence[str], pair: Bits, table: str) -> float:
        """A variable's cost at ``pair``: its members' summed ``table`` ("score", "latency_s",
        "weight_bytes" or "bops_g")."""
        if table == "bops_g":
            return sum(self.layer_bops_g(n, pair) for n in members)
        t = getattr(self, table)
        return sum(t[n][pair] for n in members)

    def extreme(self, table: Mapping[str, Mapping[Bits, float]] | str, extra: float = 0.0) -> float:
        """The smallest total of ``table`` (a table or its attribute name) any candidate reaches;
        grouped layers take their pair together."""
        if isinstance(table, str):
            return extra + sum(min(self.group_cost(m, p, table) for p in self.pairs) for _, m in self.variables)
        return extra + sum(min(sum(table[n][p] for n in m) for p in self.pairs) for _, m in self.variables)

    def check_candidate(self, candidate: Mapping[str, Bits]) -> None:
        """Raise :class:`~mpsearch.errors.CandidateError` if ``candidate`` splits a layer group."""
        check_candidate(candidate, self.groups or [])

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
            ws = self.workspace_bytes
            need = (self.activation_bytes + max(min(max(ws[n][p] for n in m) for p in self.pairs)
                                                for _, m in self.variables)) / 1024
            if need > self.activation_budget_kib:
                raise InfeasibleBudgetError(
                    f"activation budget {self.activation_budget_kib:g} KiB is below the smallest peak activation "
                    f"memory ({need:.1f} KiB planned by TVM); raise budget.activation_kib to at least {need:.1f}")
        if self.bops_budget_g is not None:
            least = self.extreme("bops_g")
            if least > self.bops_budget_g:
                raise InfeasibleBudgetError(
                    f"BOPs budget {self.bops_budget_g:g} G is below the fewest bit-operations any candidate needs "
                    f"({least:.4g} G); raise budget.bops_g to at least {least:.4g}")

    def to_json(self) -> str:
        """Plain JSON (pairs as ``"w,a"`` keys), so worker processes on other machines can load it."""
        def enc(table: Mapping[str, Mapping[Bits, float]]) -> dict:
            return {n: {f"{w},{a}": v for (w, a), v in table[n].items()} for n in self.layers}
        return json.dumps({"layers": self.layers, "pairs": [list(p) for p in self.pairs],
                           "score": enc(self.score), "latency_s": enc(self.latency_s),
                           "weight_bytes": enc(self.weight_bytes), "other_latency_s": self.other_latency_s,
                           "workspace_bytes": enc(self.workspace_bytes) if self.workspace_bytes else None,
                           "activation_bytes": self.activation_bytes,
                           "activation_budget_kib": self.activation_budget_kib,
                           "groups": self.groups, "macs": dict(self.macs) if self.macs is not None else None,
                           "bops_budget_g": self.bops_budget_g})

    @classmethod
    def from_json(cls, text: str) -> SearchProblem:
        d = json.loads(text)

        def dec(table: Mapping[str, Mapping[str, float]]) -> dict:
            return {n: {tuple(int(b) for b in k.split(",")): v for k, v in row.items()} for n, row in table.items()}
        return cls(d["layers"], [tuple(p) for p in d["pairs"]], dec(d["score"]), dec(d["latency_s"]),
                   dec(d["weight_bytes"]), d["other_latency_s"],
                   dec(d["workspace_bytes"]) if d.get("workspace_bytes") else None, d.get("activation_bytes", 0),
                   d.get("activation_budget_kib"), d.get("groups"), d.get("macs"), d.get("bops_budget_g"))
