"""Layer groups: layers that must take the same precision are one search variable.

Where groups come from:

* **Tied weights** (found automatically): two layers whose ``weight`` is the same ``Parameter``
  object hold one tensor, so they can only be stored at one bit-width.
* **User groups** (``search.groups``): each group is a list of exact layer names and/or
  ``"re:<regex>"`` patterns (matched with ``re.fullmatch`` against the layer names, as torchao's
  ``FqnToConfig`` does), e.g. ``[["layer1.0.conv1", "layer1.0.conv2"], ["re:layer3\\..*"]]``.
* **Residual adds** (opt-in, ``search.group_residual``): the layers whose outputs feed one residual
  add (through ReLU-like single-input ops) share a group.

Residual adds need no shared precision in this design: every kernel quantizes its *own* input from
the fp32 tensor between kernels, and the add is fused into one branch's kernel as an fp32 operand,
so the branches feeding an add never have to agree on a scale or bit-width (see
``mpsearch/hardware/kernels/``). ``group_residual`` is for users who want a stricter space (for
example to mirror a deployment with int8 tensors between layers, where an add's inputs share one
output scale).

Groups that overlap are merged (a layer is in one group at most: sharing is transitive). Candidates
violating a group are rejected by :func:`check_candidate` with one line naming the group.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mpsearch.candidate import Bits
from mpsearch.errors import CandidateError, ConfigError

#: Prefix of a regular-expression member of ``search.groups``.
REGEX_PREFIX = "re:"


def _few(layers: Sequence[str], k: int = 5) -> str:
    return ", ".join(layers[:k]) + (f", ... ({len(layers)} layers)" if len(layers) > k else "")


def match_members(spec: Sequence[str], layers: Sequence[str], where: str = "search.groups") -> list[str]:
    """The layers one user group names, in graph order; a name or pattern matching nothing is a ConfigError."""
    out: list[str] = []
    for item in spec:
        if item.startswith(REGEX_PREFIX):
            try:
                pattern = re.compile(item[len(REGEX_PREFIX):])
            except re.error as e:
                raise ConfigError(f"{where}: {item!r} is not a valid regular expression ({e}); fix the pattern")
            hits = [n for n in layers if pattern.fullmatch(n)]
            if not hits:
                raise ConfigError(f"{where}: pattern {item!r} matches no quantizable layer; the layers are: "
                                  f"{_few(layers)}")
            out += hits
        elif item in layers:
            out.append(item)
        else:
            raise ConfigError(f"{where}: unknown layer {item!r}; use a quantizable layer name (e.g. {_few(layers)}) "
                              f"or a '{REGEX_PREFIX}<regex>' pattern")
    return [n for n in layers if n in set(out)]


def merge_groups(layers: Sequence[str], groups: Iterable[Iterable[str]]) -> list[list[str]]:
    """Union of overlapping groups; returns the groups of two or more layers, each in graph order,
    ordered by their first member."""
    parent = {n: n for n in layers}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for group in groups:
        members = list(group)
        for m in members:
            if m not in parent:
                raise ConfigError(f"layer group names {m!r}, which is not a quantizable layer; the layers are: "
                                  f"{_few(list(layers))}")
        for m in members[1:]:
            parent[find(m)] = find(members[0])
    by_root: dict[str, list[str]] = {}
    for n in layers:
        by_root.setdefault(find(n), []).append(n)
    return [g for g in by_root.values() if len(g) > 1]


def tied_weight_groups(model: Any, layers: Sequence[str]) -> list[list[str]]:
    """Layers of ``model`` whose ``weight`` is the same Parameter object (checked on the user's model,
    before BatchNorm folding makes new tensors)."""
    by_param: dict[int, list[str]] = {}
    for name in layers:
        try:
            weight = getattr(model.get_submodule(name), "weight", None)
        except AttributeError:  # a layer fx renamed: nothing to tie
            continue
        if weight is not None:
            by_param.setdefault(id(weight), []).append(name)
    return [g for g in by_param.values() if len(g) > 1]


def residual_groups(graph_module: Any, layers: Sequence[str]) -> list[list[str]]:
    """For each residual add of the (exported) graph, the quantizable layers whose outputs reach it directly
    (through single-input ops such as ReLU, never through another add)."""
    import torch  # only for the op identities; the search itself needs no torch

    adds = (operator.add, torch.add, operator.iadd, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
    names = set(layers)

    def producer(node: Any) -> str | None:
        while True:
            if getattr(node, "op", None) == "call_module" and node.target in names:
                return str(node.target)
            if getattr(node, "op", None) not in ("call_module", "call_function", "call_method"):
                return None
            if node.op == "call_function" and node.target in adds or node.op == "call_method" and node.target == "add":
                return None
            inputs = [a for a in node.all_input_nodes]
            if len(inputs) != 1:
                return None
            node = inputs[0]

    groups = []
    for node in graph_module.graph.nodes:
        is_add = (node.op == "call_function" and node.target in adds) or \
                 (node.op == "call_method" and node.target == "add")
        if is_add:
            members = {p for p in (producer(a) for a in node.all_input_nodes) if p is not None}
            if len(members) > 1:
                groups.append([n for n in layers if n in members])
    return groups


def layer_groups(model: Any, graph_module: Any, layers: Sequence[str], user: Sequence[Sequence[str]] = (),
                 residual: bool = False) -> list[list[str]]:
    """Every group of the run: tied weights, ``search.groups`` and (opt-in) residual adds, merged."""
    groups = tied_weight_groups(model, layers)
    groups += [match_members(g, layers, f"search.groups[{i}]") for i, g in enumerate(user)]
    if residual:
        groups += residual_groups(graph_module, layers)
    return merge_groups(layers, groups)


def check_candidate(candidate: Mapping[str, Bits], groups: Iterable[Sequence[str]]) -> None:
    """Raise :class:`CandidateError` if a group's layers do not all take the same (w, a) bits."""
    for group in groups:
        bits = {n: tuple(candidate[n]) for n in group if n in candidate}
        if len(set(bits.values())) > 1:
            shown = ", ".join(f"{n}=W{b[0]}A{b[1]}" for n, b in bits.items())
            raise CandidateError(f"layers {', '.join(group)} must share one precision (a layer group: tied weights, "
                                 f"search.groups or search.group_residual), but the candidate gives {shown}; "
                                 "give them the same [w_bits, a_bits]")
