"""Reconstruction-based PTQ: AdaRound per layer and BRECQ-style per block, on the traced graph.

Both learn the same rounding variables (:class:`~mpsearch.quant.adaround.AdaRoundWeight`), and
optionally LSQ activation steps, by reconstructing an output of the float model from the input the
*quantized* model feeds it (earlier units already learned and hard-rounded), on calibration data:

* ``adaround``: the output of one layer (through its ReLU/GELU when that is its only user);
* ``brecq``: the output of one block, a stretch of the graph between two cut points where one value of
  the quantized stream alone is live (e.g. a residual block up to its final ReLU), all its layers learned
  jointly; values computed from the model's inputs alone (attention masks, rotary tables) are the same in
  both models and cross cut points as they are, so models with several inputs split into blocks too
  (Li et al., "BRECQ: Pushing the Limit of Post-Training Quantization by Block Reconstruction", 2021),
  optionally (``fisher``) with their Fisher weighting: each element of the block output error is
  weighted by the squared gradient of the calibration loss (cross-entropy with the labels) of the FP32
  model w.r.t. that output, per sample (:func:`output_fisher`, gathered once per run of :meth:`learn`,
  normalised to mean 1 per block so the rounding regulariser keeps its weight).

Loss: ``Σ (out − target)²`` (Fisher-weighted: ``Σ F ⊙ (out − target)²``) per sample, averaged over the
batch, plus ``λ Σ (1 − |2h − 1|^β)`` with ``β`` annealed from 20 to 2 after a warm-up. Each unit keeps
round-to-nearest if the learned rounding reconstructs its calibration data worse (by the same loss).

With ``lsq_weights`` each quantized layer also learns a per-output-channel weight step
(:class:`~mpsearch.quant.lsq.LsqWeightStep`, MSE-optimal initial step ``≤ max|w| / qmax``) jointly
with its rounding: the weight is ``s · clip(⌊w / s₀⌋ + h(V))``, whose codes keep ``±qmax`` at each
channel's largest weight, so the kernels' ``quantize_weight`` recovers ``s`` and the codes exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from mpsearch.candidate import FLOAT_BITS, Candidate, is_integer_bits
from mpsearch.errors import MPSearchError
from mpsearch.quant.adaround import AdaRoundWeight, beta_schedule
from mpsearch.quant.fake import ActQuant, QuantLayer, act_quantizers, fake_quant_weight, layer_forward, quantize_
from mpsearch.quant.learned import Batches, LearnedModel, Learner, clone_layer
from mpsearch.quant.lsq import LsqActQuant, LsqWeightStep, fake_quant_act_ste
from mpsearch.quant.prepare import QUANTIZABLE, PreparedModel

log = logging.getLogger(__name__)

_POINTWISE_FUNCS = {F.relu, torch.relu, F.gelu, F.relu6, F.silu, torch.tanh, torch.sigmoid, F.hardswish,
                    *(getattr(torch.ops.aten, op).default for op in ("relu", "gelu", "hardtanh", "silu", "tanh",
                                                                    "sigmoid", "hardswish", "relu_", "hardtanh_",
                                                                    "silu_", "hardswish_"))}
_POINTWISE_MODULES = (nn.ReLU, nn.GELU, nn.ReLU6, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish)
GRANULARITIES = ("layer", "block")


@dataclass(frozen=True)
class Block:
    """A stretch of the graph holding at least one quantizable layer, entered by one value of the
    quantized stream and left by one; it may also read side values (:func:`graph_blocks`)."""

    input: str  # name of the fx node whose value enters the block (the first block's: a side value)
    nodes: tuple[str, ...]  # names of the stream nodes it runs, in graph order; the last one is its output
    layers: tuple[str, ...]  # quantizable layers (module targets) inside, in graph order


def _is_pointwise(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCS
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _POINTWISE_MODULES)
    return False


def _quantizable(node: fx.Node, gm: fx.GraphModule) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), (*QUANTIZABLE, QuantLayer))


def _compute(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]


def _stream(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes downstream of a quantizable layer, the layers included: the values that differ between the
    float and the quantized model. Everything else is a *side value*, the same in both: the inputs,
    constants and what is computed from them alone (attention masks, rotary tables, token embeddings)."""
    stream: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if _quantizable(n, gm) or any(a in stream for a in n.all_input_nodes):
            stream.add(n)
    return stream


def graph_blocks(gm: fx.GraphModule) -> list[Block]:
    """Split the stream (:func:`_stream`) at cut points, where one stream value alone is live, into blocks
    with layers. Side values may be live across cuts: a block reads them as they are (:func:`side_values`).

    A block ends at the first cut after a layer, extended through a following pointwise activation
    (so a residual block ends after its final ReLU). Nodes after the last layer are left out.
    """
    compute = _compute(gm)
    stream = _stream(gm)
    first = next((n for n in compute if _quantizable(n, gm)), None)
    if first is None:
        return []
    order = {n: i for i, n in enumerate(compute)}
    end = len(compute)
    nodes = [n for n in compute if n in stream]
    last_use = {n: max((order.get(u, end) for u in n.users), default=order[n]) for n in nodes}
    blocks: list[Block] = []
    current: list[fx.Node] = []
    live_until = -1  # the furthest use of any stream value produced before the current position
    inp: fx.Node = first.args[0]
    for k, node in enumerate(nodes):
        i = order[node]
        current.append(node)
        cut = live_until <= i
        live_until = max(live_until, last_use[node])
        layers = [n.target for n in current if _quantizable(n, gm)]
        nxt = nodes[k + 1] if k + 1 < len(nodes) else None
        extend = nxt is not None and _is_pointwise(nxt, gm) and nxt.args and nxt.args[0] is node
        if layers and cut and not extend:
            blocks.append(Block(inp.name, tuple(n.name for n in current), tuple(layers)))
            inp, current = node, []
    return blocks


@dataclass(frozen=True)
class SideValues:
    """The side values the blocks read, per calibration batch, and how each depends on the sample count.

    Attributes:
        batches: One ``{node name: value}`` per batch (the first block's input among them).
        per_sample: The tensors with entries per sample on axis 0 (token embeddings, attention masks), by
            their rows per sample (``(batch · tokens, features)`` rows: the tokens); the other tensors
            (rotary tables, constants) are the same for every sample.
        per_count: Integers proportional to the sample count (a batch size the graph reads off its input to
            reshape with), by their value for one sample.
        samples: Samples over all batches (axis 0 of the model's inputs).
    """

    batches: list[dict[str, Any]]
    per_sample: Mapping[str, int]
    per_count: Mapping[str, int]
    samples: int

    def joined(self) -> dict[str, Any]:
        """The values over all batches: per-sample ones concatenated, the others from the first batch."""
        if not self.batches:
            return {}
        first = self.batches[0]
        return {k: torch.cat([b[k] for b in self.batches]) if k in self.per_sample else v for k, v in first.items()}

    def at(self, joined: Mapping[str, Any], idx: torch.Tensor) -> dict[str, Any]:
        """``joined`` at the samples ``idx`` (an index tensor)."""
        return {k: take_samples(v, idx, self.per_sample[k]) if k in self.per_sample else
                self.per_count[k] * len(idx) if k in self.per_count else v for k, v in joined.items()}


def take_samples(t: torch.Tensor, idx: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """The samples ``idx`` of ``t``, whose axis 0 holds ``rows`` consecutive rows per sample."""
    if rows == 1:
        return t[idx]
    return t.reshape(-1, rows, *t.shape[1:])[idx].flatten(0, 1)


def _rows(t: torch.Tensor, samples: int) -> int:
    rows = t.shape[0] // samples
    if rows < 1 or rows * samples != t.shape[0]:
        raise MPSearchError(f"block reconstruction cannot tell the samples of a {tuple(t.shape)} value from "
                            f"{samples} samples (its batch is not on axis 0); set search.ptq=none")
    return rows


def _inputs(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _side_env(gm: fx.GraphModule, names: set[str], stream: set[fx.Node] | None, x: Any) -> dict[str, Any]:
    """The values ``names`` of ``gm`` on the batch ``x``, computing the nodes outside ``stream`` (None: every
    node, ``names`` too)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = _inputs(x)
    if len(inputs) != len(placeholders):
        raise MPSearchError(f"the model takes {len(placeholders)} inputs, the calibration batch has {len(inputs)}")
    env: dict[str, Any] = {p.name: t for p, t in zip(placeholders, inputs)}
    with torch.no_grad():
        _run(gm, [n.name for n in _compute(gm) if stream is None or n not in stream], env)
    return {k: env[k] for k in names if k in env}


def side_values(gm: fx.GraphModule, blocks: list[Block], inputs: list[Any]) -> SideValues:
    """The side values ``blocks`` read, computed from each batch of model ``inputs`` (a Tensor or a tuple
    of Tensors per batch). A tensor is per sample when its axis 0 doubles from a one- to a two-sample batch
    (a row per sample, or ``(batch · tokens, features)`` rows), and shared when its shape does not change;
    an integer doubles (a batch size the graph reshapes with) or stays; anything else (a batch on another
    axis) is one :class:`MPSearchError` line. The one- and two-sample batches also check that the blocks'
    values hold each sample's rows as one run (:func:`_check_sample_major`)."""
    stream = _stream(gm)
    inside = {name for b in blocks for name in b.nodes}
    names = {a.name for n in gm.graph.nodes if n.name in inside for a in n.all_input_nodes
             if a not in stream and a.op != "get_attr"}
    names |= {b.input for b in blocks if b.input not in inside}
    checked = {name for b in blocks for name in (b.input, *b.nodes)}
    checked |= {a.name for n in gm.graph.nodes if n.name in checked for a in n.all_input_nodes}
    first = _inputs(inputs[0])
    # the first sample, and it beside the first sample unlike it (a copy of it where all are alike)
    other = next((j for j in range(1, len(first[0])) if not all(torch.equal(t[0], t[j]) for t in first)), None)
    one, two = (_side_env(gm, names | checked, None, tuple(t[rows] for t in first)) for rows in ([0], [0, other or 0]))
    if other is not None:
        _check_sample_major(one, two, checked)
    per_sample: dict[str, int] = {}
    per_count: dict[str, int] = {}
    for name in sorted(names):
        a, b = one[name], two[name]
        if isinstance(a, torch.Tensor):
            if a.shape == b.shape:
                continue
            if a.dim() == b.dim() and b.shape[0] == 2 * a.shape[0] and a.shape[1:] == b.shape[1:]:
                per_sample[name] = a.shape[0]
                continue
        elif isinstance(a, int) and not isinstance(a, bool) and isinstance(b, int):
            if a == b:
                continue
            if b == 2 * a:
                per_count[name] = a
                continue
        else:
            continue
        raise MPSearchError(f"block reconstruction cannot tell the samples of graph value {name!r} (one sample: "
                            f"{_described(a)}, two: {_described(b)}); set search.ptq=none")
    return SideValues([_side_env(gm, names, stream, x) for x in inputs], per_sample, per_count,
                      sum(len(_inputs(x)[0]) for x in inputs))


def _check_sample_major(one: Mapping[str, Any], two: Mapping[str, Any], checked: set[str]) -> None:
    """Refuse a graph whose blocks read or write a value with its samples interleaved on axis 0 (a
    sequence-first model's ``(tokens · batch, features)`` rows): reconstruction takes a sample's rows as
    one consecutive run (:func:`take_samples`), so those would mix samples silently. ``one`` and ``two``:
    the graph's values on a sample and on it beside a different one; a value whose axis 0 doubles must
    start with the one-sample value."""
    for name in sorted(checked):
        a, b = one.get(name), two.get(name)
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() == 0 or a.numel() == 0 \
                or b.shape[0] != 2 * a.shape[0] or b.shape[1:] != a.shape[1:]:
            continue
        head = b[:a.shape[0]]
        same = torch.allclose(head, a, rtol=1e-3, atol=1e-4 * float(a.abs().max())) if a.is_floating_point() \
            else torch.equal(head, a)
        if not same:
            raise MPSearchError(f"block reconstruction cannot take the samples of graph value {name!r} "
                                f"{tuple(b.shape)}: its rows interleave the samples (a sequence-first layout); "
                                "set search.ptq=none")


def _described(v: Any) -> str:
    return f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)


def _run(gm: fx.GraphModule, names: Sequence[str], env: dict[str, Any],
         modules: Mapping[str, nn.Module] | None = None) -> dict[str, Any]:
    """Evaluate the named nodes of ``gm`` in ``env`` (values by node name, added to); ``modules``
    overrides call_module targets."""
    nodes = {n.name: n for n in gm.graph.nodes}
    modules = modules or {}

    def load(n: fx.Node) -> Any:
        if n.name not in env and n.op == "get_attr":
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            env[n.name] = obj
        return env[n.name]

    for name in names:
        node = nodes[name]
        args = fx.node.map_arg(node.args, load)
        kwargs = fx.node.map_arg(node.kwargs, load)
        if node.op == "call_module":
            mod = modules.get(node.target) or gm.get_submodule(node.target)
            env[name] = mod(*args, **kwargs)
        elif node.op == "call_function":
            env[name] = node.target(*args, **kwargs)
        elif node.op == "call_method":
            env[name] = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            raise MPSearchError(f"cannot run graph node {name!r} of kind {node.op!r} in a block")
    return env


def run_nodes(gm: fx.GraphModule, names: tuple[str, ...], inp: str, x: torch.Tensor,
              modules: Mapping[str, nn.Module] | None = None, side: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Evaluate the named nodes of ``gm`` on ``x`` (the value of node ``inp``) and the ``side`` values they
    read; ``modules`` overrides targets."""
    env = dict(side or {})
    env[inp] = x
    return _run(gm, names, env, modules)[names[-1]]


class _LearnLayer(nn.Module):
    """A layer whose weight rounding (and activation step) is being learned."""

    def __init__(self, layer: nn.Module, w_bits: int, act: ActQuant | None, lsq: bool,
                 lsq_weights: bool = False) -> None:
        super().__init__()
        self.layer = layer
        quantized = is_integer_bits(w_bits)
        self.wstep = LsqWeightStep(layer.weight, w_bits) if (quantized and lsq_weights) else None
        start = None if self.wstep is None else self.wstep.step().detach()
        self.rounding = AdaRoundWeight(layer.weight, w_bits, start) if quantized else None
        if quantized:  # round-to-nearest on the kernels' own grid: the baseline a unit may keep
            self.register_buffer("rtn_weight", fake_quant_weight(layer.weight.detach(), w_bits))
        self.act_fixed = act
        self.lsq = LsqActQuant(act) if (act is not None and not act.half and lsq) else None
        self.mode = "soft"  # "soft" | "hard" | "rtn"

    def weight(self) -> torch.Tensor:
        if self.rounding is None:
            return self.layer.weight.detach()
        if self.mode == "rtn":
            return self.rtn_weight
        if self.wstep is None:
            return self.rounding.soft() if self.mode == "soft" else self.rounding.hard()
        codes = self.rounding.soft_codes() if self.mode == "soft" else self.rounding.codes()
        step = self.wstep.step().view((-1,) + (1,) * (codes.dim() - 1))
        return codes * step if self.mode == "soft" else (codes * step).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lsq is not None and self.mode != "rtn":
            x = self.lsq(x)
        elif self.act_fixed is not None:
            x = fake_quant_act_ste(x, self.act_fixed)
        layer = self.layer
        return layer_forward(layer, x, self.weight(), None if layer.bias is None else layer.bias.detach())


@dataclass(frozen=True)
class ReconstructionSettings:
    """Optimisation settings shared by AdaRound and BRECQ.

    Attributes:
        iters: Adam steps per unit (layer or block).
        batch_size: Calibration samples per step.
        lr: Adam learning rate of the rounding variables.
        lsq_lr: Adam learning rate of the activation steps, relative to each step's initial value.
        reg_weight: λ of the rounding regulariser.
        warmup: Share of the steps without the regulariser.
        lsq: Also learn the activation step sizes (LSQ).
        seed: Seed of the minibatch sampling.
        lsq_weights: Also learn a per-output-channel weight step (LSQ) jointly with the rounding; its Adam
            learning rate is ``lsq_lr`` relative to the initial (MSE-optimal) step.
        fisher: Weight the block output error by the FP32 model's squared loss gradients (BRECQ;
            block granularity only).
    """

    iters: int = 500
    batch_size: int = 64
    lr: float = 1e-2
    lsq_lr: float = 1e-3
    reg_weight: float = 0.01
    warmup: float = 0.2
    lsq: bool = False
    seed: int = 0
    lsq_weights: bool = False
    fisher: bool = False


def _rec_loss(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    err = (out - target).pow(2)
    if weight is not None:
        err = err * weight
    return err.flatten(1).sum(1).mean()


class _Capture(fx.Interpreter):
    """Runs a graph module keeping the values of the named nodes."""

    def __init__(self, gm: fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names = names
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.names:
            self.values[n.name] = out
        return out


def _sum_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dim() > 2:  # (N, T, V) logits, a label per position
        return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum")
    return F.cross_entropy(logits, y, reduction="sum")


def output_fisher(gm: fx.GraphModule, names: list[str], batches: Batches,
                  loss_fn: Any = _sum_ce) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the named node outputs, per sample: ``(∂ℓᵢ/∂zᵢ)²`` for each calibration sample.

    ``ℓᵢ`` is ``loss_fn(model(x), y)`` of the FP32 graph (default: cross-entropy with the labels, summed,
    so each sample's gradient is that of its own loss). Returns one tensor per name, shaped like the
    node's output over all samples of ``batches`` (in order), stored as bfloat16 (fp32's range).
    """
    wanted = set(names)
    missing = wanted - {n.name for n in gm.graph.nodes}
    if missing:
        raise MPSearchError(f"no graph node {sorted(missing)[0]!r} to take the Fisher of; use a node name of the model")
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for x, y in batches:
        cap = _Capture(gm, wanted)
        with torch.enable_grad():
            # token ids and masks take no gradient: the embedding's weights carry it to the nodes
            logits = cap.run(*(t.detach().clone().requires_grad_(True) if t.is_floating_point() else t
                               for t in _inputs(x)))
            values = [cap.values[n] for n in names]
            grads = torch.autograd.grad(loss_fn(logits, y), values, allow_unused=True)
        for name, v, g in zip(names, values, grads):
            g = torch.zeros_like(v) if g is None else g
            out[name].append(g.detach().pow(2).to(torch.bfloat16))
    return {n: torch.cat(v) for n, v in out.items()}


class Reconstruction(Learner):
    """AdaRound (``granularity="layer"``) or BRECQ-style (``"block"``) learned rounding."""

    def __init__(self, granularity: str = "layer", settings: ReconstructionSettings | None = None) -> None:
        if granularity not in GRANULARITIES:
            raise MPSearchError(f"unknown reconstruction granularity {granularity!r}; use one of {GRANULARITIES}")
        self.granularity = granularity
        self.name = "adaround" if granularity == "layer" else "brecq"
        self.cfg = settings or ReconstructionSettings()
        if self.cfg.fisher and granularity != "block":
            raise MPSearchError("Fisher-weighted reconstruction is for blocks (brecq); turn fisher off for adaround")

    def settings(self) -> dict[str, Any]:
        return {"granularity": self.granularity, **asdict(self.cfg)}

    def describe(self) -> str:
        extras = [x for x, on in (("Fisher", self.cfg.fisher), ("LSQ act", self.cfg.lsq),
                                  ("LSQ weight", self.cfg.lsq_weights)) if on]
        return self.name + (f" ({', '.join(extras)})" if extras else "")

    def learn(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
              batches: Batches) -> LearnedModel:
        start = time.perf_counter()
        fp = prepared.graph_module
        q = quantize_(prepared.copy_module(), candidate, ranges).eval()
        acts = act_quantizers(candidate, ranges)
        new_ranges = {k: (float(v[0]), float(v[1])) for k, v in ranges.items()}
        params: dict[str, torch.Tensor] = {}
        units: list[dict[str, Any]] = []
        gen = torch.Generator().manual_seed(self.cfg.seed)
        blocks = graph_blocks(fp)
        with torch.no_grad():
            side = side_values(fp, blocks, [x for x, _ in batches]) if blocks else SideValues([], {}, {}, 0)
            x_fp = [b[blocks[0].input] for b in side.batches] if blocks else []
            x_q = list(x_fp)
        fisher: dict[str, torch.Tensor] = {}
        if self.cfg.fisher:  # once, from the FP32 model on the calibration batches
            fisher = output_fisher(fp, [b.nodes[-1] for b in blocks], batches)
        for block in blocks:
            learnable = [n for n in block.layers if n in candidate and (is_integer_bits(candidate[n][0]) or
                                                                        (self.cfg.lsq and acts[n] is not None
                                                                         and not acts[n].half))]
            if learnable:
                # A block learns jointly, through every quantized layer in it (straight-through estimators).
                groups = [(n,) for n in learnable] if self.granularity == "layer" else \
                    [tuple(n for n in block.layers if n in candidate)]
                weight = None
                if block.nodes[-1] in fisher:
                    raw = fisher[block.nodes[-1]]
                    mean = float(raw.float().mean())
                    weight = (raw.float() / mean) if mean > 0 else None
                for group in groups:
                    units.append(self._learn_unit(fp, q, block, group, candidate, acts, x_fp, x_q, side, gen,
                                                  params, new_ranges, weight))
            with torch.no_grad():
                x_fp = [run_nodes(fp, block.nodes, block.input, x, side=b) for x, b in zip(x_fp, side.batches)]
                x_q = [run_nodes(q, block.nodes, block.input, x, side=b) for x, b in zip(x_q, side.batches)]
        stats = {"seconds": round(time.perf_counter() - start, 2), "units": units,
                 "flipped": sum(u["flipped"] for u in units),
                 "kept_rtn": sum(1 for u in units if u["kept_rtn"]), "fisher": self.cfg.fisher,
                 "lsq_weights": self.cfg.lsq_weights}
        return LearnedModel(self.name, candidate.key(), params, new_ranges, stats)

    def _unit_data(self, fp: fx.GraphModule, q: fx.GraphModule, block: Block, group: tuple[str, ...],
                   x_fp: list[torch.Tensor], x_q: list[torch.Tensor],
                   side: SideValues) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(input from the quantized model, float target, function running the unit on the input's samples
        ``idx``: ``forward(x, mods, idx)``)."""
        if self.granularity == "block":
            with torch.no_grad():
                target = torch.cat([run_nodes(fp, block.nodes, block.input, x, side=b)
                                    for x, b in zip(x_fp, side.batches)])
            joined = side.joined()

            def forward(x: torch.Tensor, mods: Mapping[str, nn.Module], idx: Any) -> torch.Tensor:
                return run_nodes(q, block.nodes, block.input, x, mods, side.at(joined, idx))
            return torch.cat(x_q), target, forward
        (name,) = group
        node = next(n for n in fp.graph.nodes if n.op == "call_module" and n.target == name)
        users = list(node.users)
        tail = users[0] if len(users) == 1 and _is_pointwise(users[0], fp) else None
        names = (node.name,) + ((tail.name,) if tail is not None else ())
        seen: dict[str, list[torch.Tensor]] = {"in": [], "out": []}
        h_in = q.get_submodule(name).register_forward_pre_hook(lambda _m, a: seen["in"].append(a[0].detach()))
        h_out = fp.get_submodule(name).register_forward_hook(lambda _m, _a, o: seen["out"].append(o.detach()))
        try:
            with torch.no_grad():
                for x, b in zip(x_fp, side.batches):
                    run_nodes(fp, block.nodes, block.input, x, side=b)
                for x, b in zip(x_q, side.batches):
                    run_nodes(q, block.nodes, block.input, x, side=b)
        finally:
            h_in.remove()
            h_out.remove()
        target = torch.cat(seen["out"])
        if tail is not None:
            with torch.no_grad():
                target = run_nodes(fp, (tail.name,), node.name, target)
        inp = node.args[0].name
        return torch.cat(seen["in"]), target, lambda x, mods, _idx: run_nodes(q, names, inp, x, mods)

    def _learn_unit(self, fp: fx.GraphModule, q: fx.GraphModule, block: Block, group: tuple[str, ...],
                    candidate: Candidate, acts: Mapping[str, ActQuant | None], x_fp: list[torch.Tensor],
                    x_q: list[torch.Tensor], side: SideValues, gen: torch.Generator, params: dict[str, torch.Tensor],
                    new_ranges: dict[str, tuple[float, float]], weight: torch.Tensor | None = None,
                    ) -> dict[str, Any]:
        cfg = self.cfg
        start = time.perf_counter()
        inp, target, forward = self._unit_data(fp, q, block, group, x_fp, x_q, side)
        mods = {n: _LearnLayer(fp.get_submodule(n), candidate[n][0], acts[n], cfg.lsq, cfg.lsq_weights)
                for n in group}
        roundings = [m.rounding for m in mods.values() if m.rounding is not None]
        steps = [m.lsq for m in mods.values() if m.lsq is not None]
        wsteps = [m.wstep for m in mods.values() if m.wstep is not None]
        groups: list[dict[str, Any]] = [{"params": [r.v for r in roundings], "lr": cfg.lr}] if roundings else []
        groups += [{"params": [s.step], "lr": cfg.lsq_lr * float(s.step.detach())} for s in steps]
        groups += [{"params": [w.u for w in wsteps], "lr": cfg.lsq_lr}] if wsteps else []
        opt = torch.optim.Adam(groups)
        n = side.samples  # a value may hold several rows of each sample (token rows)
        r_in, r_out = _rows(inp, n), _rows(target, n)

        def loss_at(idx: torch.Tensor) -> torch.Tensor:
            out = forward(take_samples(inp, idx, r_in), mods, idx)
            return _rec_loss(out, take_samples(target, idx, r_out),
                             None if weight is None else take_samples(weight, idx, r_out))

        for step in range(cfg.iters):
            loss = loss_at(torch.randint(n, (min(cfg.batch_size, n),), generator=gen))
            beta = beta_schedule(step, cfg.iters, cfg.warmup)
            if beta is not None and roundings:
                loss = loss + cfg.reg_weight * sum(r.regularizer(beta) for r in roundings)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def mse(mode: str) -> float:
            for m in mods.values():
                m.mode = mode
            with torch.no_grad():
                total = sum(float(loss_at(idx)) * len(idx) * r_out for idx in torch.arange(n).split(256))
            return total / target.numel()

        mse_rtn, mse_learned = mse("rtn"), mse("hard")
        keep_rtn = mse_learned > mse_rtn
        flipped = 0
        for name, m in mods.items():
            w_bits, a_bits = candidate[name]
            if m.rounding is not None:  # snapped either way, so every quantized weight of the patch is on the grid
                m.mode = "rtn" if keep_rtn else "hard"
                params[f"{name}.weight"] = m.weight().detach().clone()
                flipped += 0 if keep_rtn else m.rounding.flipped()
            if m.lsq is not None and not keep_rtn:
                new_ranges[name] = m.lsq.learned_range(new_ranges[name][0])
            layer = fp.get_submodule(name)
            weight = params.get(f"{name}.weight", layer.weight.detach())
            act = None if a_bits >= FLOAT_BITS else ActQuant.for_layer(new_ranges, name, a_bits)
            q.set_submodule(name, QuantLayer(clone_layer(layer, weight), w_bits, act))
        seconds = round(time.perf_counter() - start, 2)
        log.debug("%s %s: mse rtn %.3g learned %.3g%s, %.1f s", self.name, ",".join(group), mse_rtn, mse_learned,
                  " (kept rtn)" if keep_rtn else "", seconds)
        out = {"layers": list(group), "mse_rtn": mse_rtn, "mse_learned": mse_learned, "kept_rtn": keep_rtn,
               "flipped": flipped, "seconds": seconds}
        if wsteps:  # learned step / max-scaling step, per layer (mean over channels)
            out["weight_step_ratio"] = {name: round(float((m.wstep.step().detach() / m.wstep.smax).mean()), 4)
                                        for name, m in mods.items() if m.wstep is not None}
        return out


def reconstruction_mse(prepared: PreparedModel, learned: LearnedModel | None, candidate: Candidate,
                       ranges: Mapping[str, tuple[float, float]], batches: Batches) -> float:
    """Mean squared error between the float model's logits and the quantized one's (RTN if ``learned`` is None)."""
    model = learned.apply(prepared) if learned is not None else prepared
    use_ranges = learned.ranges if learned is not None else ranges
    q = quantize_(model.copy_module(), candidate, use_ranges).eval()
    total = count = 0.0
    with torch.no_grad():
        for x, _ in batches:
            diff = q(*_inputs(x)) - prepared.graph_module(*_inputs(x))
            total += float(diff.pow(2).sum())
            count += diff.numel()
    return total / max(count, 1)


def unit_mse(prepared: PreparedModel, learned: LearnedModel | None, candidate: Candidate,
             ranges: Mapping[str, tuple[float, float]], batches: Batches, granularity: str) -> dict[str, float]:
    """Reconstruction error of each unit, the quantity AdaRound / BRECQ minimise, on ``batches``.

    For each layer (through its sole pointwise activation) or block: the mean squared difference between
    its output in the quantized model (RTN when ``learned`` is None) and in the float model.
    """
    fp = prepared.graph_module
    model = learned.apply(prepared) if learned is not None else prepared
    q = quantize_(model.copy_module(), candidate, learned.ranges if learned is not None else ranges).eval()
    sums: dict[str, list[float]] = {}

    def add(key: str, a: torch.Tensor, b: torch.Tensor) -> None:
        acc = sums.setdefault(key, [0.0, 0.0])
        acc[0] += float((a - b).pow(2).sum())
        acc[1] += a.numel()

    blocks = graph_blocks(fp)
    sides = side_values(fp, blocks, [x for x, _ in batches]).batches if blocks else []
    for side in sides:
        x_fp = x_q = side[blocks[0].input]
        for block in blocks:
            outs: dict[str, dict[str, torch.Tensor]] = {"fp": {}, "q": {}}
            hooks = []
            if granularity == "layer":
                for gm, which in ((fp, "fp"), (q, "q")):
                    for name in block.layers:
                        hooks.append(gm.get_submodule(name).register_forward_hook(
                            lambda _m, _a, o, name=name, which=which: outs[which].__setitem__(name, o)))
            try:
                with torch.no_grad():
                    y_fp = run_nodes(fp, block.nodes, block.input, x_fp, side=side)
                    y_q = run_nodes(q, block.nodes, block.input, x_q, side=side)
            finally:
                for h in hooks:
                    h.remove()
            if granularity == "block":
                add(",".join(block.layers), y_q, y_fp)
            for name in outs["fp"]:
                node = next(n for n in fp.graph.nodes if n.op == "call_module" and n.target == name)
                users = list(node.users)
                a, b = outs["q"][name], outs["fp"][name]
                if len(users) == 1 and _is_pointwise(users[0], fp):
                    a = run_nodes(fp, (users[0].name,), node.name, a)
                    b = run_nodes(fp, (users[0].name,), node.name, b)
                add(name, a, b)
            x_fp, x_q = y_fp, y_q
    return {k: v[0] / max(v[1], 1) for k, v in sums.items()}


__all__ = ["Block", "GRANULARITIES", "Reconstruction", "ReconstructionSettings", "SideValues", "graph_blocks",
           "output_fisher", "reconstruction_mse", "run_nodes", "side_values", "unit_mse"]
